#!/usr/bin/env bash
# Peak memory of `mend dc --full-scan` over many keys (default 5,000,000; --quick 50,000):
# 3 groups x N small objects (64 bytes: the count is what matters, not the size), 1,000
# rewritten in one group, then `mend dc --full-scan` with MEND_REPORT_RSS=1. Every version
# of every replica is gathered into temp files and merged from there, so the engine's
# memory must not grow with N. Prints keys, versions gathered, wall time and peak RSS.
source "$(dirname "$0")/lib.sh"
N=5000000; D=1000
[ "$QUICK" = 1 ] && N=50000
for a in "$@"; do case "$a" in [0-9]*) N=$a ;; esac; done
WORK=$(mktemp -d)
trap 'stop_cluster; rm -rf "$WORK"' EXIT
start_cluster "$WORK/c" 3 1
t0=$(date +%s)
"$MEND" load -g 1,2,3 --count "$N" --size 64 --timestamp 1000 -b 4096 >/dev/null
echo "loaded 3 x $N objects in $(( $(date +%s) - t0 )) s" >&2
"$MEND" load -g 2 --count "$D" --size 64 --timestamp 2000 >/dev/null
t0=$(date +%s.%N)
out=$(MEND_REPORT_RSS=1 "$MEND" dc -g 1,2,3 --full-scan --stats json --tmp-dir "$WORK" 2>"$WORK/err") \
  || { cat "$WORK/err" >&2; exit 1; }
t1=$(date +%s.%N)
rss=$(sed -n 's/^mend: peak_rss_kib //p' "$WORK/err")
"$MEND" verify -g 1,2,3 >/dev/null
python3 - "$N" "$t0" "$t1" "$rss" "$out" <<'PY'
import json, sys
n, t0, t1, rss, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = json.loads(out)
assert s["gathered"] >= 3 * n, s
assert s["copied"] == 2000, s
print(f"| {n:,} keys x 3 groups, --full-scan | {s['gathered']:,} versions gathered | {s['copied']} copies | {t1 - t0:.1f} s | peak RSS {rss // 1024} MiB |")
PY
