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
	  "Largest request or reply payload accepted or produced, in bytes. Plus 40960 bytes of "  \
	  "envelope overhead it must fit envelope.max.bytes; kreq's producers set librdkafka's "   \
	  "message.max.bytes to it plus 41984 (a smaller kafka.message.max.bytes is refused), "    \
	  "and the Kafka broker's max.message.bytes must be as large (docs/operations.md).")       \
	X(CLOCK_SKEW_MS, "clock.skew.ms", INT, "30000", 0, 3600000,                                \
	  "Allowed clock difference between hosts, in milliseconds: a message whose issued-at "    \
	  "time is further in the future than this is refused with KREQ_EFUTURE.")                 \
	X(TOPIC_PREFIX, "topic.prefix", STR, "kreq", 1, 100,                                       \
	  "Prefix of every topic kreq uses: requests go to <prefix>.<service>.requests, where "    \
	  "<service> is the method name up to its last '.'.")                                      \
	X(REQUEST_TIMEOUT_MS, "request.timeout.ms", INT, "30000", 1, 86400000,                     \
	  "Default time a call may take, in milliseconds: its absolute deadline is the time of "   \
	  "the call plus this. Per call: kreq_call_opts_set_timeout().")                           \
	X(RETRY_ATTEMPT_TIMEOUT_MS, "retry.attempt.timeout.ms", INT, "5000", 1, 86400000,          \
	  "How long to wait for a reply to one attempt before sending the request again (same "    \
	  "correlation id and idempotency key, next attempt number).")                             \
	X(RETRY_MAX_ATTEMPTS, "retry.max.attempts", INT, "5", 1, 100,                              \
	  "Most attempts per call, the first included. 1 disables retries.")                       \
	X(RETRY_BACKOFF_MS, "retry.backoff.ms", INT, "100", 0, 60000,                              \
	  "Backoff before the first retry; doubles on every further retry, with full jitter.")     \
	X(RETRY_BACKOFF_MAX_MS, "retry.backoff.max.ms", INT, "2000", 0, 600000,                    \
	  "Upper bound of the retry backoff.")                                                     \
	X(MAX_IN_FLIGHT, "max.in.flight", INT, "100000", 1, 10000000,                              \
	  "Most calls pending at once in one client. Beyond it a call waits up to "                \
	  "backpressure.wait.ms for room, then fails with KREQ_EBACKPRESSURE.")                    \
	X(BACKPRESSURE_WAIT_MS, "backpressure.wait.ms", INT, "1000", 0, 3600000,                   \
	  "How long a call may wait for room under max.in.flight; 0 fails at once.")               \
	X(UNAVAILABLE_AFTER_MS, "unavailable.after.ms", INT, "10000", 0, 86400000,                 \
	  "When every Kafka broker has been unreachable for this long, pending and new calls "     \
	  "fail with KREQ_EUNAVAILABLE instead of waiting out their deadlines. 0 disables.")       \
	X(REPLY_TOPIC, "reply.topic", STR, "", 0, 249,                                             \
	  "Topic this client reads replies from. Empty: <topic.prefix>.reply.<client.id>, "        \
	  "created with one partition if missing. A shared topic needs reply.partition.")          \
	X(REPLY_PARTITION, "reply.partition", INT, "-1", -1, 1000000,                              \
	  "Partition of reply.topic owned by this client instance; -1 means 0 for a topic of "     \
	  "its own. With a shared reply topic every instance must have its own partition.")        \
	X(CLIENT_START_TIMEOUT_MS, "client.start.timeout.ms", INT, "15000", 100, 600000,           \
	  "Longest kreq_client_new() waits for Kafka (reply topic, reply consumer position).")     \
	X(SERVICE_CHECK_MS, "service.check.ms", INT, "5000", 0, 3600000,                           \
	  "How often the client checks that a called service has workers: members in the "         \
	  "consumer group <topic.prefix>.<service>. A service found without any fails its "        \
	  "pending calls and refuses new ones with KREQ_EUNAVAILABLE until a worker joins. "       \
	  "Checked at the first call of a service, then at this interval. 0 disables.")            \
	X(ADMIN_SOCKET, "admin.socket", STR, "", 0, 107,                                           \
	  "Path of the opt-in admin endpoint, a Unix socket (mode 0600) serving the pending "      \
	  "table and metrics to `kreq pending` and `kreq stats`. Empty: disabled.")                \
	X(SLOW_REPORT_IN_FLIGHT, "slow.report.in.flight", INT, "10000", 0, 100000000,              \
	  "Log a slow-request report when this many calls are pending. 0 disables this trigger.")  \
	X(SLOW_REPORT_AGE_MS, "slow.report.age.ms", INT, "10000", 0, 86400000,                     \
	  "Log a slow-request report when the oldest pending call is this old. 0 disables this "   \
	  "trigger.")                                                                              \
	X(SLOW_REPORT_INTERVAL_MS, "slow.report.interval.ms", INT, "30000", 100, 86400000,         \
	  "At most one slow-request report per this interval.")                                    \
	X(SLOW_REPORT_ENTRIES, "slow.report.entries", INT, "5", 1, 100,                            \
	  "How many of the oldest pending calls a slow-request report lists.")                     \
	X(WORKER_MODE, "worker.mode", STR, "transactional", 1, 32,                                 \
	  "How a worker publishes results: `transactional` writes the reply, the result record "   \
	  "and the request offset in one Kafka transaction (exactly-once: no handler runs again "  \
	  "once its transaction committed); `light` uses an idempotent producer and commits "      \
	  "offsets after delivery (lower latency, at-least-once: a crash may run a handler again " \
	  "and publish its reply twice).")                                                         \
	X(WORKER_HANDLER_THREADS, "worker.handler.threads", INT, "4", 1, 1024,                     \
	  "Threads that run handlers not registered as inline.")                                   \
	X(WORKER_MAX_IN_FLIGHT, "worker.max.in.flight", INT, "1000", 1, 1000000,                   \
	  "Most requests a worker has in progress at once, counting duplicates waiting on a "      \
	  "running one (at most 16 each); at the limit it pauses fetching.")                       \
	X(WORKER_MIN_BUDGET_MS, "worker.min.budget.ms", INT, "1", 0, 3600000,                      \
	  "A request with less than this left before its deadline is not started (status 2).")     \
	X(WORKER_START_TIMEOUT_MS, "worker.start.timeout.ms", INT, "30000", 1000, 600000,          \
	  "Longest kreq_worker_run() waits for Kafka while starting (topics, the transactional "   \
	  "producer's init_transactions()) before it fails with KREQ_EKAFKA.")                     \
	X(WORKER_SHUTDOWN_GRACE_MS, "worker.shutdown.grace.ms", INT, "10000", 0, 3600000,          \
	  "On stop, how long in-flight handlers may run before their work is abandoned "           \
	  "(uncommitted, so another worker redoes it).")                                           \
	X(WORKER_RATE_LIMIT, "worker.rate.limit.per.key", INT, "0", 0, 100000000,                  \
	  "Requests per second accepted per signing key id (token bucket, burst of one second); "  \
	  "excess requests get status 7. 0 disables.")                                             \
	X(WORKER_REPLY_TOPIC_ALLOW, "worker.reply.topic.allow", STR, "", 0, 4096,                  \
	  "Comma-separated fnmatch(3) patterns a request's reply topic must match, or the "        \
	  "request is dropped and counted. Empty: <topic.prefix>.reply.*")                         \
	X(WORKER_TXN_BATCH_MAX, "worker.txn.batch.max", INT, "1000", 1, 1000000,                   \
	  "Most results per Kafka transaction. A transaction also commits when it is "             \
	  "worker.txn.batch.ms old, or when no request is in progress and none arrived for "       \
	  "worker.txn.linger.ms and, after a transaction of several results, it is "               \
	  "worker.txn.gather.us old.")                                                             \
	X(WORKER_TXN_BATCH_MS, "worker.txn.batch.ms", INT, "20", 0, 60000,                         \
	  "Longest a transaction stays open while requests are in progress; in worker.mode=light " \
	  "the interval between offset commits (0: at every loop step).")                          \
	X(WORKER_TXN_LINGER_MS, "worker.txn.linger.ms", INT, "0", 0, 60000,                        \
	  "When no request is in progress, how long a transaction waits for more records before "  \
	  "it commits. 0: it commits as soon as nothing is in progress and nothing is queued; "    \
	  "requests arriving meanwhile gather for the next one (worker.txn.gap.us).")              \
	X(WORKER_TXN_GATHER_US, "worker.txn.gather.us", INT, "600", 0, 1000000,                    \
	  "Transactional mode: when the last committed transaction carried more than one result "  \
	  "(calls in flight together), the next one stays open at least this long after its "      \
	  "first record before it commits, so that the callers just answered, whose next "         \
	  "requests arrive a few hundred microseconds later, share it instead of waiting a whole " \
	  "commit for the one after. After a lone result it commits at once (no cost to one call " \
	  "at a time). 0 disables.")                                                               \
	X(WORKER_TXN_GAP_US, "worker.txn.gap.us", INT, "500", 0, 1000000,                          \
	  "Transactional mode: after a transaction ends, how long the worker takes no new "        \
	  "request before it starts the next one. Kafka's transaction coordinator is still "       \
	  "writing the ended transaction's markers then, and answers a transaction that reaches "  \
	  "it meanwhile CONCURRENT_TRANSACTIONS, which librdkafka retries only 20 ms later. "      \
	  "Requests arriving in the gap share the next transaction. Raise it where markers take "  \
	  "longer (transaction log replicated across Kafka brokers) if commits often take ~20 ms " \
	  "more than their median (kreq_worker_txn_commit_seconds).")                              \
	X(WORKER_TXN_CALL_TIMEOUT_MS, "worker.txn.call.timeout.ms", INT, "30000", 1000, 600000,    \
	  "Transactional mode: longest one transaction call (sending the offsets, commit, abort) " \
	  "may take. Past it the outcome is unknown: the worker fences its producer (a new "       \
	  "epoch) "                                                                                \
	  "and rewinds to the committed offsets, never retrying in the old epoch. The worker "     \
	  "serves nothing while a call waits.")                                                    \
	X(WORKER_BATCH_LINGER_MS, "worker.batch.linger.ms", INT, "1", 0, 1000,                     \
	  "Light mode: Kafka linger.ms of the worker's batching producer, which takes every "      \
	  "result record and, under load, the replies (worker.batch.threshold): fewer, larger "    \
	  "ProduceRequests. Replies at low load leave at once on the other producer.")             \
	X(WORKER_BATCH_THRESHOLD, "worker.batch.threshold", INT, "32", 0, 1000000,                 \
	  "Light mode: when the loop applies at least this many handler results together, their "  \
	  "replies go through the batching producer (worker.batch.linger.ms) instead of leaving "  \
	  "at once; 0 never batches replies.")                                                     \
	X(WORKER_DEDUP_RETENTION_MS, "worker.dedup.retention.ms", INT, "604800000", 1000,          \
	  315360000000,                                                                            \
	  "How long a result is kept for deduplication (also the results topic's retention.ms "    \
	  "when the worker creates it). Keep verification keys at least this long.")               \
	X(WORKER_DEDUP_MAX_BYTES, "worker.dedup.max.bytes", INT, "268435456", 1048576,             \
	  1099511627776,                                                                           \
	  "Memory a worker spends on stored results (all its partitions). Beyond it the key id "   \
	  "holding the most makes room (worker.dedup.key.max.bytes says how). Only when even "     \
	  "their small findable records do not fit does a key stop deduplicating before its "      \
	  "retention ends: kreq_worker_dedup_evicted_total counts those and the worker logs a "    \
	  "warning.")                                                                              \
	X(WORKER_REBUILD_TIMEOUT_MS, "worker.dedup.rebuild.timeout.ms", INT, "60000", 1000,        \
	  86400000,                                                                                \
	  "Longest a worker's dedup rebuild may take when partitions are assigned, waiting for "   \
	  "transactions open on the results topic when it started included; past it the worker "   \
	  "stops (kreqd exits 1) naming the partition. Also how long a serving worker asks "       \
	  "Kafka again, at an assignment, when Kafka does not answer (a Kafka broker restarting "  \
	  "or moving its partitions' leadership).")                                                \
	X(WORKER_TOPIC_PARTITIONS, "worker.topic.partitions", INT, "6", 1, 100000,                 \
	  "Partitions of the requests and results topics when the worker creates them.")           \
	X(WORKER_TOPIC_REPLICATION, "worker.topic.replication.factor", INT, "0", -1, 32,           \
	  "Replication factor of the requests and results topics when the worker creates them. "   \
	  "0: min(3, Kafka brokers in the cluster's metadata), so one Kafka broker may fail "      \
	  "without losing results (the dedup store) or stopping the service; -1: the Kafka "       \
	  "broker's default.replication.factor (1 out of the box). An existing topic with fewer "  \
	  "replicas is logged as a warning naming it (docs/operations.md).")                       \
	X(WORKER_SERVICE, "service", STR, "", 0, 200,                                              \
	  "kreqd: the service to serve (methods <service>.<name>).")                               \
	X(KREQD_PLUGINS, "kreqd.plugins", STR, "", 0, 4096,                                        \
	  "kreqd: comma-separated paths of handler plugins (kreq/plugin.h).")                      \
	X(KREQD_BUILTINS, "kreqd.builtins", STR, "", 0, 1024,                                      \
	  "kreqd: comma-separated built-in handlers to register as <service>.<name>: echo, "       \
	  "sleep, fail, record (see docs/operations.md).")                                         \
	X(KREQD_METRICS_ADDRESS, "kreqd.metrics.address", STR, "127.0.0.1", 1, 255,                \
	  "kreqd: address of the HTTP metrics endpoint.")                                          \
	X(KREQD_METRICS_PORT, "kreqd.metrics.port", INT, "0", 0, 65535,                            \
	  "kreqd: port of the HTTP metrics endpoint (GET /metrics); 0 disables it.")               \
	X(KREQD_RECORD_FILE, "kreqd.record.file", STR, "", 0, 4096,                                \
	  "kreqd: file the `record` built-in appends one line per execution to (tests count "      \
	  "handler executions with it).")                                                          \
	X(LOG_LEVEL, "log.level", INT, "6", 0, 7,                                                  \
	  "Most verbose syslog level logged (3 error, 4 warning, 6 info, 7 debug). Logs go to "    \
	  "stderr unless kreq_conf_set_log_cb() sets a callback.")                                 \
	X(WORKER_DEDUP_KEY_MAX_BYTES, "worker.dedup.key.max.bytes", INT, "0", 0, 1099511627776,    \
	  "Memory the stored results of one signing key id may hold on a worker (all its "         \
	  "partitions); 0: no per-key budget. A key over it makes room among its own results "     \
	  "only, oldest first, and worker.dedup.max.bytes makes room in the key holding the "      \
	  "most. A result leaving memory stays findable (key, digest, expiry and its offset in "   \
	  "the results topic, about 200 bytes, counted in the budgets): a retry reads it back "    \
	  "from the results topic and the handler does not run again.")                            \
	X(WORKER_HANDLER_GRACE_MS, "worker.handler.grace.ms", INT, "1000", 0, 3600000,             \
	  "How long past a request's deadline its handler may still reply. Then the worker "       \
	  "answers status 2 (\"handler did not finish before the deadline\"), stores that as the " \
	  "result (a retry gets the same answer; the work is not run again), frees the request's " \
	  "place in worker.max.in.flight and its offset, flags it cancelled and refuses the "      \
	  "handler's late reply (KREQ_ESTATE).")                                                   \
	X(WORKER_MAX_DEADLINE_MS, "worker.max.deadline.ms", INT, "86400000", 1000, 315360000000,   \
	  "A worker drops (counts, never runs or answers) a request whose deadline is further "    \
	  "than this plus clock.skew.ms from now: the signer cannot stretch the replay window. "   \
	  "The default is the longest request.timeout.ms a client accepts. "                       \
	  "worker.dedup.retention.ms must be at least this plus worker.max.request.age.ms.")       \
	X(WORKER_MAX_REQUEST_AGE_MS, "worker.max.request.age.ms", INT, "86400000", 1000,           \
	  315360000000,                                                                            \
	  "A worker drops (counts, never runs or answers) a request issued longer ago than this "  \
	  "plus clock.skew.ms, whatever its deadline. Each attempt carries its own issue time, "   \
	  "never older than its timeout while its deadline is ahead, so the default (the "         \
	  "longest request.timeout.ms) drops only requests no kreq client sends.")                 \
	X(WORKER_RESULT_SIGNERS, "worker.result.signers", STR, "", 0, 4096,                        \
	  "Comma-separated key ids whose Results the dedup rebuild accepts from the results "      \
	  "topic; Results signed by any other key (a tenant's, say) are counted "                  \
	  "(kreq_worker_results_ignored_total) and ignored. Must include the signing key. Empty: " \
	  "the keyring's signing key only. When rotating the workers' signing key, list the old "  \
	  "and the new id (and keep the old key in the key file) for worker.dedup.retention.ms "   \
	  "(docs/operations.md).")                                                                 \
	X(WORKER_TOPIC_MIN_ISR, "worker.topic.min.insync.replicas", INT, "0", -1, 32,              \
	  "min.insync.replicas of the requests and results topics when the worker creates them: "  \
	  "a write (acks=all) succeeds once this many replicas have it. 0: the replication "       \
	  "factor minus 1, at least 1 (2 of 3: a result survives the loss of any one Kafka "       \
	  "broker, and one Kafka broker may be down while writes go on); -1: the Kafka broker's "  \
	  "default.")                                                                              \
	X(REPLY_TOPIC_REPLICATION, "reply.topic.replication.factor", INT, "0", -1, 32,             \
	  "Replication factor of the reply topic when the client creates it (its "                 \
	  "min.insync.replicas is this minus 1, at least 1). 0: min(3, Kafka brokers in the "      \
	  "cluster's metadata), so replies keep coming when one Kafka broker fails; -1: the "      \
	  "Kafka broker's default. An existing reply topic with fewer replicas is logged as a "    \
	  "warning.")                                                                              \
	X(WORKER_POISON_MAX_ATTEMPTS, "worker.poison.max.attempts", INT, "3", 0, 32,               \
	  "A request whose handler was started this many times without finishing (its worker "     \
	  "crashed or lost the partition each time; counted across replicas in "                   \
	  "<topic.prefix>.<service>.attempts) is not run again: it is answered with status 10 "    \
	  "(poison), that result is stored, and the request with its attempts goes to "            \
	  "<topic.prefix>.<service>.dead. 0 disables counting (no attempts written).")             \
	X(WORKER_POISON_DEAD_RETENTION_MS, "worker.poison.dead.retention.ms", INT, "2592000000",   \
	  60000, 315360000000,                                                                     \
	  "retention.ms of the dead-letter topic <topic.prefix>.<service>.dead when the worker "   \
	  "creates it (default 30 days).")                                                         \
	X(WORKER_POISON_SOLO_MAX_MS, "worker.poison.solo.max.ms", INT, "5000", 0, 86400000,        \
	  "A request whose handler was already started without finishing (a suspect of an "        \
	  "earlier crash) runs alone: nothing else starts beside it, so that if it crashes the "   \
	  "worker again, only it is counted. After this long it no longer runs alone: other "      \
	  "requests start beside it (if it then crashes the worker, they are counted with it and " \
	  "run alone in turn). Bounds how long one hanging suspect stalls the worker. 0: alone "   \
	  "until it finishes (or its deadline + worker.handler.grace.ms).")                        \
	X(WORKER_POISON_JOURNAL, "worker.poison.journal", STR, "", 0, 4096,                        \
	  "File (mapped into memory) where the worker notes the requests whose handlers run, so "  \
	  "that after a crash its next start records them in the attempts topic. With it a "       \
	  "handler start costs a memory write instead of an acknowledged Kafka write (requests "   \
	  "another worker may have started, and requests already counted, still get the Kafka "    \
	  "write). One file per worker; removed on a clean stop. Empty: every start is written "   \
	  "to Kafka and acknowledged first. kreqd: empty means "                                   \
	  "<kreqd.state.dir>/<service>.<client.id>.journal when kreqd.state.dir (or systemd's "    \
	  "$RUNTIME_DIRECTORY) is set.")                                                           \
	X(KREQD_STATE_DIR, "kreqd.state.dir", STR, "", 0, 4000,                                    \
	  "kreqd: directory for the crash journal (worker.poison.journal); empty: "                \
	  "$RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) if set, else no journal.")             \
	X(WORKER_STATIC_MEMBERSHIP, "worker.static.membership", BOOL, "true", 0, 0,                \
	  "Join the consumer group as a static member (Kafka's group.instance.id, "                \
	  "worker.group.instance.id): a worker that restarts within kafka.session.timeout.ms "     \
	  "gets its own partitions back with no rebalance of the group, where a dynamic member "   \
	  "stops every replica twice (leave, rejoin). A static member does not leave the group "   \
	  "when it stops: its partitions wait up to kafka.session.timeout.ms before they move "    \
	  "(docs/operations.md, \"Restarts\"). false: dynamic membership.")                        \
	X(WORKER_GROUP_INSTANCE_ID, "worker.group.instance.id", STR, "", 0, 249,                   \
	  "The static member's group.instance.id. Empty: the worker's client.id, which is "        \
	  "already unique per replica (it names the transactional.id). A fenced worker rejoins "   \
	  "with a new consumer; two live workers with one instance id fence each other, and the "  \
	  "third fencing within a minute stops one with KREQ_ECONF (kreqd: exit 2).")

/* librdkafka settings kreq applies before the user's "kafka." properties
 * (which override them): X(name, value, why). Used by the client and by
 * docs/CONFIGURATION.md. */
/* Why every kreq handle re-bootstraps sooner than librdkafka's default. */
#define KREQ__REBOOTSTRAP_WHY                                                                      \
	"a handle that knows no Kafka broker bootstraps again after 10 s instead of librdkafka's " \
	"300 s, during which calls time out (a Kafka broker that stalls past its KRaft "           \
	"controller session leaves the metadata for a moment)"

#define KREQ__KAFKA_PRODUCER_DEFAULTS(X)                                                           \
	X("linger.ms", "0", "send at once: no 5 ms batching delay on the request path")            \
	X("socket.nagle.disable", "true", "no Nagle delay on small requests")                      \
	X("partitioner", "murmur2_random",                                                         \
	  "Java-compatible partitioning by idempotency key: retries land on one partition")        \
	X("enable.idempotence", "false",                                                           \
	  "a request duplicated by a producer retry is absorbed by the worker's dedup store; "     \
	  "librdkafka's idempotent producer polls in a loop while 5 messages are in flight")       \
	X("max.in.flight.requests.per.connection", "1",                                            \
	  "no reordering on retry; requests queued meanwhile go out as one batch")                 \
	X("statistics.interval.ms", "1000",                                                        \
	  "notice that Kafka is reachable again without traffic")                                  \
	X("topic.metadata.refresh.interval.ms", "10000",                                           \
	  "idle clients reconnect, so recovery is noticed within seconds")                         \
	X("acks", "all",                                                                           \
	  "a request is acknowledged once min.insync.replicas replicas have it: it survives the "  \
	  "loss of its partition leader")                                                          \
	X("metadata.recovery.rebootstrap.trigger.ms", "10000", KREQ__REBOOTSTRAP_WHY)

#define KREQ__KAFKA_CONSUMER_DEFAULTS(X)                                                           \
	X("isolation.level", "read_committed", "only replies whose transaction committed")         \
	X("fetch.wait.max.ms", "100", "bounded fetch wait (data still returns at once)")           \
	X("fetch.error.backoff.ms", "10", "recover quickly from a failed fetch")                   \
	X("socket.nagle.disable", "true", "no Nagle delay")                                        \
	X("enable.auto.commit", "false", "the reply consumer commits nothing")                     \
	X("enable.partition.eof", "false", "no end-of-partition events")                           \
	X("metadata.recovery.rebootstrap.trigger.ms", "10000", KREQ__REBOOTSTRAP_WHY)

/* librdkafka settings a worker (kreq_worker_run) applies before the user's
 * "kafka." properties. */
#define KREQ__KAFKA_WORKER_PRODUCER_DEFAULTS(X)                                                    \
	X("linger.ms", "0",                                                                        \
	  "replies leave at once; batching happens while a request is in flight")                  \
	X("socket.nagle.disable", "true", "no Nagle delay")                                        \
	X("enable.idempotence", "true",                                                            \
	  "required by transactions; worker.mode=light sets false (duplicates are harmless "       \
	  "there)")                                                                                \
	X("max.in.flight.requests.per.connection", "1",                                            \
	  "librdkafka's idempotent producer polls in a loop while 5 messages are in flight; "      \
	  "with one, replies queued meanwhile go out as one batch")                                \
	X("transaction.timeout.ms", "10000",                                                       \
	  "a crashed worker's open transaction blocks readers of its partitions (and the "         \
	  "dedup rebuild of whoever takes them over) for at most this long")                       \
	X("allow.auto.create.topics", "false",                                                     \
	  "a worker never creates a topic by writing to it: a deleted results topic must not "     \
	  "come "                                                                                  \
	  "back with the Kafka broker's defaults (one partition, not compacted), and a reply to "  \
	  "a "                                                                                     \
	  "reply topic that does not exist is counted and not sent")                               \
	X("acks", "all",                                                                           \
	  "a reply or result is acknowledged (and its request's offset committed) only once "      \
	  "min.insync.replicas replicas have it: a Kafka broker failure loses no result")          \
	X("retry.backoff.ms", "5",                                                                 \
	  "a transaction begun while the previous one's commit markers are still being written "   \
	  "gets CONCURRENT_TRANSACTIONS; librdkafka 2.12.1 retries AddOffsetsToTxn and EndTxn "    \
	  "after this backoff (doubling up to retry.backoff.max.ms): 100 ms by default, which "    \
	  "stalled a call ~100 ms (docs/PERFORMANCE.md)")                                          \
	X("metadata.recovery.rebootstrap.trigger.ms", "10000", KREQ__REBOOTSTRAP_WHY)

#define KREQ__KAFKA_WORKER_CONSUMER_DEFAULTS(X)                                                    \
	X("isolation.level", "read_committed", "results and requests of committed transactions")   \
	X("enable.auto.commit", "false", "offsets are committed in the worker's transaction")      \
	X("enable.auto.offset.store", "false", "idem")                                             \
	X("auto.offset.reset", "earliest", "a new group serves requests sent before it started")   \
	X("session.timeout.ms", "6000", "a crashed worker's partitions move within seconds")       \
	X("heartbeat.interval.ms", "500", "idem")                                                  \
	X("partition.assignment.strategy", "cooperative-sticky",                                   \
	  "a membership change moves only the partitions that must move; the others are served "   \
	  "on (docs/operations.md, \"Restarts\")")                                                 \
	X("fetch.wait.max.ms", "100", "bounded fetch wait (data still returns at once)")           \
	X("socket.nagle.disable", "true", "no Nagle delay")                                        \
	X("allow.auto.create.topics", "false", "idem: reading a topic never creates it")           \
	X("metadata.recovery.rebootstrap.trigger.ms", "10000", KREQ__REBOOTSTRAP_WHY)

#endif
