#!/usr/bin/env bash
# Plugin overhead: the same mend dc run (3 groups, N keys of 64 bytes held in groups 1 and
# 2, absent in group 3, so every key differs) decided by the built-in dc policy and by the
# example exec plugins (testdata/plugins/). --dry-run, so every run decides the same keys
# and nothing is copied: the difference is the policy's. Default N 100,000; --quick 5,000.
# Prints a markdown table: wall time and keys decided per second.
source "$(dirname "$0")/lib.sh"
N=100000
[ "$QUICK" = 1 ] && N=5000
for a in "$@"; do case "$a" in [0-9]*) N=$a ;; esac; done
WORK=$(mktemp -d)
trap 'stop_cluster; rm -rf "$WORK"' EXIT
PLUGINS="$ROOT/testdata/plugins"

row() { # label args...
  local label=$1; shift
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$("$MEND" dc -g 1,2,3 --dry-run --stats json "$@" 2>"$WORK/err") || { cat "$WORK/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 - "$label" "$t0" "$t1" <<PY
import json, sys
label, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = json.loads('''$out''')
print(f"| {label} | {s['keys']} | {t1 - t0:.2f} | {s['keys'] / (t1 - t0):,.0f} |")
PY
}

echo "mend dc --dry-run, $N differing keys, $(nproc) cores, python $(python3 -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d)"
echo "| policy | keys decided | wall s | keys/s |"
echo "|---|---|---|---|"
start_cluster "$WORK/c" 3 1
"$MEND" load -g 1,2 --count "$N" --size 64 --timestamp 1000 -b 1024 >/dev/null
row "built-in dc" --policy dc
row "-C newest_wins.py (Python)" -C "python3 '$PLUGINS/newest_wins.py'"
row "-C report_only.sh (POSIX sh)" -C "sh '$PLUGINS/report_only.sh'"
