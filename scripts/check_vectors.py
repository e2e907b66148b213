#!/usr/bin/env python3
"""Independent check of docs/protocol.md's test vectors.

Re-derives the signed prefix (protocol version 2), the HMAC-SHA-256 and
Ed25519 signatures and the envelope framing from the doc's own inputs, and
decodes the Request body with its own wire reader (the signed destination
service, field 12, must be the method up to its last '.') with Python's hmac module and the
`cryptography` package (OpenSSL), sharing no code with kreq's C
implementation. Run by CTest (test_vectors_independent).
"""
import hashlib
import hmac
import re
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def vectors(doc):
    block = doc.split("<!-- test-vectors:begin -->")[1].split("<!-- test-vectors:end -->")[0]
    out, cur = [], None
    for line in block.splitlines():
        m = re.match(r"^([a-z0-9-]+): (.*)$", line)
        if not m:
            continue
        k, v = m.groups()
        if k == "vector":
            cur = {"vector": v}
            out.append(cur)
        else:
            cur[k] = v
    return out


def varint(n):
    b = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            b.append(byte | 0x80)
        else:
            b.append(byte)
            return bytes(b)


def read_varint(b, i):
    n = shift = 0
    while True:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def fields(b):
    """{field number: [values]} of a protobuf message (varint and bytes only)."""
    out, i = {}, 0
    while i < len(b):
        tag, i = read_varint(b, i)
        if tag & 7 == 0:
            v, i = read_varint(b, i)
        elif tag & 7 == 2:
            n, i = read_varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {tag & 7}")
        out.setdefault(tag >> 3, []).append(v)
    return out


def field(num, wire, payload):
    if wire == 0:
        return varint(num << 3) + varint(payload)
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def check(v):
    body = bytes.fromhex(v["body"])
    kid = v["key-id"].encode()
    version = 2
    prefix = b"kreq-envelope-v1\x00" + struct.pack(">IB", version, len(kid)) + kid + struct.pack(">IQ", 1, len(body))
    assert prefix.hex() == v["signed-prefix"], f"{v['vector']}: signed-prefix differs"
    signed = prefix + body
    if "hmac-key" in v:
        sig = hmac.new(bytes.fromhex(v["hmac-key"]), signed, hashlib.sha256).digest()
    else:
        sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519-seed"]))
        pub = sk.public_key().public_bytes_raw() if hasattr(sk.public_key(), "public_bytes_raw") else None
        if pub is not None:
            assert pub.hex() == v["ed25519-public-key"], f"{v['vector']}: public key differs"
        sig = sk.sign(signed)
    assert sig.hex() == v["signature"], f"{v['vector']}: signature differs"
    env = field(1, 0, version) + field(2, 2, kid) + field(3, 0, 1) + field(4, 2, body) + field(5, 2, sig)
    assert env.hex() == v["envelope"], f"{v['vector']}: envelope differs"
    req = fields(body)
    method, service = req[3][0].decode(), req[12][0].decode()
    assert method == "billing.charge" and req[2] == [b"order-42"], f"{v['vector']}: body differs"
    assert service == method.rsplit(".", 1)[0] == "billing", f"{v['vector']}: service {service}"
    assert all(len(vals) == 1 for f, vals in req.items() if f != 11), "repeated field"
    print(f"ok {v['vector']}")


def main():
    doc = open(sys.argv[1], encoding="utf-8").read()
    vs = vectors(doc)
    assert len(vs) == 2, "expected two vectors"
    for v in vs:
        check(v)
    print(f"{len(vs)} passed, 0 failed")


if __name__ == "__main__":
    main()
