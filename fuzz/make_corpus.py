#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/<target>/), reproducibly.

Everything is signed with the docs/protocol.md test-vector HMAC key (id
test-hmac-1, bytes 00..1f) that the fuzz targets trust, at times around
their fixed clock (2025-12-31T23:59:30Z), so each seed verifies and reaches
the code behind the signature. Usage: fuzz/make_corpus.py [fuzz/corpus]
"""
import base64
import hashlib
import hmac
import os
import struct
import sys

NOW = 1767225570000
KEY_ID = b"test-hmac-1"
HMAC_KEY = bytes(range(32))
KIND = {"request": 1, "reply": 2, "cancel": 3, "result": 4}


def varint(n):
    n &= (1 << 64) - 1  # negative int32/int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def f(num, value):
    """One field: ints as varints, bytes/str length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


CORR = bytes.fromhex("00112233445566778899aabbccddeeff")
BODIES = {
    "request": f(1, CORR) + f(2, b"order-42") + f(3, "billing.charge") + f(4, b'{"amount":100}')
    + f(5, "kreq.reply.client-a") + f(7, NOW + 30000) + f(8, NOW) + f(9, 1) + f(10, "client-a")
    + f(11, f(1, "traceparent") + f(2, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
    + f(12, "billing"),
    "reply": f(1, CORR) + f(2, 503) + f(3, b"out") + f(4, "out of widgets") + f(5, 1)
    + f(6, b"order-42") + f(7, NOW) + f(8, NOW + 30000) + f(9, 2),
    "cancel": f(1, CORR) + f(2, b"order-42") + f(3, NOW) + f(4, NOW + 30000) + f(5, "client-a"),
    "result": f(1, hashlib.sha256(b"billing.charge\0" + b'{"amount":100}').digest()) + f(2, -1)
    + f(3, b"ok") + f(4, "") + f(5, b"order-42") + f(6, "test-hmac-1") + f(7, "billing.charge")
    + f(8, NOW) + f(9, NOW + 604800000),
}


def envelope(kind, body, version=2):
    prefix = b"kreq-envelope-v1\0" + struct.pack(">IB", version, len(KEY_ID)) + KEY_ID
    prefix += struct.pack(">IQ", kind, len(body))
    sig = hmac.new(HMAC_KEY, prefix + body, hashlib.sha256).digest()
    return f(1, version) + f(2, KEY_ID) + f(3, kind) + f(4, body) + f(5, sig)


def write(root, target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as out:
        out.write(data)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for name, body in BODIES.items():
        k = KIND[name]
        # fuzz_envelope: even first byte = a record from the wire
        write(root, "envelope", f"envelope-{name}", b"\0" + envelope(k, body))
        # odd first byte = a body it signs itself; bits 1-3 the kind
        write(root, "envelope", f"body-{name}", bytes([1 | k << 1]) + body)
    write(root, "envelope", "envelope-result-v1", b"\0" + envelope(4, BODIES["result"], 1))
    write(root, "envelope", "envelope-request-v1", b"\0" + envelope(1, BODIES["request"], 1))
    write(root, "result", "result-v2", b"\0" + BODIES["result"])
    write(root, "result", "result-v1", b"\1" + BODIES["result"])
    k32 = base64.b64encode(bytes(range(1, 33))).decode()
    seed = bytes(range(0x20, 0x40))
    write(root, "keyfile", "hmac-signing",
          f"kreq-keyring 1\n# comment\nkey k1 hmac-sha256 {k32} methods=svc.a,svc.b\n"
          f"key k2 hmac-sha256 {k32}\nsigning k1\n".encode())
    # an Ed25519 secret key needs its public half; the fuzzer mutates this one
    write(root, "keyfile", "ed25519-public",
          f"kreq-keyring 1\nkey p ed25519-public {base64.b64encode(seed).decode()}\n".encode())
    write(root, "keyfile", "ed25519-mismatched",
          f"kreq-keyring 1\nkey e ed25519 {base64.b64encode(seed + seed).decode()}\n"
          f"signing e\n".encode())
    write(root, "conf", "kreqd",
          b"# kreqd\nservice = billing\nkafka.bootstrap.servers = 127.0.0.1:9092\n"
          b"worker.mode = light\nworker.max.deadline.ms = 3600000\nlog.level = 7\n"
          b"kafka.partitioner = murmur2_random\nrequest.timeout.ms=1000\n")
    write(root, "conf", "bad", b"no equals sign\nclient.id = \nkafka. = x\n")


if __name__ == "__main__":
    main()
