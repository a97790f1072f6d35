#!/usr/bin/env bash
# mend merge after growth: one group of one node holding N x 1 KiB objects (default
# 1,000,000; --quick 20,000) gains a node; after `route push`, `mend merge` moves the keys
# whose partitions moved (about half) to the new node. Prints keys/s and MB/s.
source "$(dirname "$0")/lib.sh"
N=1000000
[ "$QUICK" = 1 ] && N=20000
for a in "$@"; do case "$a" in [0-9]*) N=$a ;; esac; done
WORK=$(mktemp -d)
NEW_PID=""
trap '[ -n "$NEW_PID" ] && kill -TERM $NEW_PID 2>/dev/null; stop_cluster; rm -rf "$WORK"' EXIT
start_cluster "$WORK/c" 1 1
"$MEND" load -g 1 --count "$N" --size 1024 -b 1024 >/dev/null
"$MEND" route add-node -g 1 --id g1n2 --addr 127.0.0.1:0 --yes >/dev/null
mkfifo "$WORK/new.ready"
"$MEND" node --id g1n2 --cluster "$WORK/c" >"$WORK/new.ready" 2>"$WORK/new.log" &
NEW_PID=$!
read -r _ <"$WORK/new.ready"
"$MEND" route push >/dev/null
t0=$(date +%s.%N)
OUT=$(MEND_REPORT_RSS=1 "$MEND" merge -g 1 --stats json 2>"$WORK/err") || { cat "$WORK/err" >&2; exit 1; }
t1=$(date +%s.%N)
python3 - "$t0" "$t1" "$(sed -n 's/^mend: peak_rss_kib //p' "$WORK/err")" <<PY
import json, sys
t0, t1, rss = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = json.loads('''$OUT''')
secs = t1 - t0
print(f"mend merge after adding a node, $N x 1 KiB, $(nproc) cores, $(date -u +%Y-%m-%d)")
print("| keys moved | removed | value bytes | wall s | keys/s | MB/s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
print(f"| {s['copied']} | {s['removed']} | {s['bytes']} | {secs:.2f} | {s['copied']/secs:.0f} | {s['bytes']/secs/1e6:.1f} | {rss//1024} |")
PY
