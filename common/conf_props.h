/*
 * conf_props.h — THE property table. One line per property:
 *   X(ID, "name", TYPE, "default", min, max, "documentation")
 * TYPE is INT (decimal integer within [min, max]), BOOL (true/false) or STR
 * (any string; min/max bound its length). Adding a property here makes it
 * settable, readable through the kreq__conf_* accessors and documented in
 * docs/CONFIGURATION.md (regenerate with `kreq-confdoc > docs/CONFIGURATION.md`;
 * a test fails when the file is stale).
 */
#ifndef KREQ_CONF_PROPS_H
#define KREQ_CONF_PROPS_H

#define KREQ__PROPS(X)                                                                             \
	X(CLIENT_ID, "client.id", STR, "kreq", 1, 255,                                             \
	  "Identifier of this client or worker instance, carried in every request and used "       \
	  "in topic names and logs.")                                                              \
	X(KEYRING_FILE, "keyring.file", STR, "", 0, 4096,                                          \
	  "Path of the key file (see docs/protocol.md, \"Key file\"). Files holding secret "       \
	  "keys must not be readable by group or others.")                                         \
	X(SIGNING_KEY_ID, "signing.key.id", STR, "", 0, 64,                                        \
	  "Key id used to sign outgoing envelopes. Empty: the key named by the key file's "        \
	  "`signing` line.")                                                                       \
	X(ENVELOPE_MAX_BYTES, "envelope.max.bytes", INT, "1048576", 256, 268435456,                \
	  "Largest encoded envelope accepted or produced, in bytes. Larger input is refused "      \
	  "with KREQ_EOVERSIZE before it is parsed.")                                              \
	X(PAYLOAD_MAX_BYTES, "payload.max.bytes", INT, "1000000", 0, 268435456,                    \
	  "Largest request or reply payload accepted or produced, in bytes.")                      \
	X(CLOCK_SKEW_MS, "clock.skew.ms", INT, "30000", 0, 3600000,                                \
	  "Allowed clock difference between hosts, in milliseconds: a message whose issued-at "    \
	  "time is further in the future than this is refused with KREQ_EFUTURE.")

#endif
