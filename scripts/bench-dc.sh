#!/usr/bin/env bash
# mend dc on loopback:
#  sparse: 3 groups x N x 1 KiB objects (default 1,000,000; --quick 20,000), 1,000 keys
#          rewritten in group 2 -> dc by fingerprints; again -> dc --full-scan (the ratio);
#  bulk:   an empty group recovering B bytes of 64 KiB objects (default 2 GiB; --quick 64 MiB).
# Prints a markdown table: wall time, wire bytes, peak RSS of the dc process.
source "$(dirname "$0")/lib.sh"
N=1000000; BULK=$((2 << 30)); D=1000
[ "$QUICK" = 1 ] && { N=20000; BULK=$((64 << 20)); }
for a in "$@"; do case "$a" in [0-9]*) N=$a ;; esac; done
WORK=$(mktemp -d)
trap 'stop_cluster; rm -rf "$WORK"' EXIT

dc_row() { # label args...
  local label=$1; shift
  local t0 t1 out rss
  t0=$(date +%s.%N)
  out=$(MEND_REPORT_RSS=1 "$MEND" dc --stats json "$@" 2>"$WORK/err") || { cat "$WORK/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  rss=$(sed -n 's/^mend: peak_rss_kib //p' "$WORK/err")
  python3 - "$label" "$t0" "$t1" "$rss" <<PY
import json, sys
label, t0, t1, rss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = json.loads('''$out''')
wire = s["bytes_sent"] + s["bytes_received"] + s["node_to_node_bytes"]
mbs = s["bytes"] / (t1 - t0) / 1e6
print(f"| {label} | {s['keys']} | {s['copied']} | {s['bytes']} | {wire} | {t1 - t0:.2f} | {mbs:.1f} | {int(rss) // 1024} |")
PY
}

echo "mend dc, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo "| case | keys decided | copies | value bytes copied | wire bytes (engine both ways + node to node) | wall s | MB/s copied | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
start_cluster "$WORK/c" 3 1
"$MEND" load -g 1,2,3 --count "$N" --size 1024 --timestamp 1000 -b 1024 >/dev/null
"$MEND" load -g 2 --count "$D" --start 0 --size 1024 --timestamp 2000 >/dev/null
dc_row "$N x 1 KiB, $D rewritten in one group: fingerprints" -g 1,2,3
"$MEND" load -g 2 --count "$D" --start "$D" --size 1024 --timestamp 2000 >/dev/null
dc_row "same, next $D rewritten: --full-scan" -g 1,2,3 --full-scan
"$MEND" verify -g 1,2,3 >/dev/null
# Incremental (what `mend schedule` runs between full compares): D keys rewritten now;
# the data loaded above carries timestamps from 1970, so -t 10m iterates only new writes.
"$MEND" load -g 2 --count "$D" --start $((2 * D)) --size 1024 >/dev/null
dc_row "same, next $D rewritten: -t 10m (incremental)" -g 1,2,3 -t 10m
"$MEND" load -g 2 --count "$D" --start $((3 * D)) --size 1024 >/dev/null
dc_row "same, next $D rewritten: fingerprints (full compare)" -g 1,2,3
"$MEND" verify -g 1,2,3 >/dev/null
stop_cluster

COUNT=$((BULK / 65536))
start_cluster "$WORK/b" 2 1
"$MEND" load -g 1 --count "$COUNT" --size 65536 --prefix bulk- -b 32 >/dev/null
dc_row "empty group 2 receives $COUNT x 64 KiB" -g 1,2 -n 32
"$MEND" verify -g 1,2 >/dev/null
