#!/bin/sh
# Runs every target (or those named after the time) for $1 seconds (default 300), one after the other, with overflow checks on
# and a 64 MiB cap on any single allocation. Logs go to logs/<target>.log.
set -u
secs=${1:-300}
[ $# -gt 0 ] && shift
targets=${*:-idx cifar npy npz imdb_members}
cd "$(dirname "$0")"
mkdir -p corpus logs
for t in $targets; do
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run -a "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -max_len=8192 -malloc_limit_mb=64 -rss_limit_mb=1024 \
        -print_final_stats=1 >"logs/$t.log" 2>&1
    echo "$t: exit $?"
done
