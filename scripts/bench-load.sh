#!/usr/bin/env bash
# mend load throughput: N x 1 KiB objects into 3 groups (1 node each) on loopback.
# Usage: scripts/bench-load.sh [--quick] [COUNT]   (default 1,000,000; --quick: 20,000)
source "$(dirname "$0")/lib.sh"
COUNT=1000000
[ "$QUICK" = 1 ] && COUNT=20000
for a in "$@"; do case "$a" in [0-9]*) COUNT=$a ;; esac; done

WORK=$(mktemp -d)
trap 'stop_cluster; rm -rf "$WORK"' EXIT
start_cluster "$WORK/c" 3 1

echo "mend load: $COUNT x 1 KiB objects into groups 1,2,3 ($(nproc) cores)"
OUT=$(MEND_REPORT_RSS=1 "$MEND" load -g 1,2,3 --count "$COUNT" --size 1024 2>&1)
echo "$OUT"
echo "node process peak RSS: $(node_peak_rss_kib) KiB"
# Every object is in every group.
for k in obj-0 "obj-$((COUNT - 1))"; do
  "$MEND" stat -g 1,2,3 "$k" --json | grep -c '"live"' | grep -qx 3 || { echo "missing $k" >&2; exit 1; }
done
echo "$OUT" | grep -q "loaded $((COUNT * 3)) objects" || { echo "load incomplete" >&2; exit 1; }
