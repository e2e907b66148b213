#!/bin/sh
# poison_cost.sh — what counting handler starts costs (issue 17): p50 at 1 in
# flight of bench_roundtrip with the real worker, counting off / acked
# Attempts / crash journal, alternating, 5 rounds, both worker modes.
# usage: KREQ_TEST_BOOTSTRAP=host:port bench/poison_cost.sh (from the source tree, after a build in build/)
J=${TMPDIR:-/tmp}/kreq-bench-journal.$$
for round in 1 2 3 4 5; do
  for mode in light transactional; do
    for v in off acked journal; do
      case $v in off) c="worker.poison.max.attempts=0";; acked) c="worker.poison.max.attempts=3";;
        journal) rm -f $J; c="worker.poison.max.attempts=3,worker.poison.journal=$J";; esac
      p50=$(KREQ_BENCH_WORKER=$mode KREQ_BENCH_ONLY=1 KREQ_BENCH_WORKER_CONF="$c" \
        nice -n 5 timeout 300 build/bench/bench_roundtrip 2000 1 1 2>/dev/null | awk '/^kreq call/{print $3}')
      echo "$round $mode $v $p50"
    done
  done
done
rm -f "$J"
