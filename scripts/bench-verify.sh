#!/usr/bin/env bash
# mend verify on 3 groups x N keys (default 1,000,000; --quick 20,000) on loopback:
# identical replicas (fingerprints vs --full-scan), then d = 10, 1000, 10000 keys changed in
# group 2 (cumulative: 10, then 1000, then 10000 in all): keys found, bytes, round trips.
# Values are 64 bytes: verify moves metadata only, so value size does not matter here.
# Then store write throughput with and without fingerprint maintenance.
source "$(dirname "$0")/lib.sh"
N=1000000
[ "$QUICK" = 1 ] && N=20000
for a in "$@"; do case "$a" in [0-9]*) N=$a ;; esac; done
WORK=$(mktemp -d)
trap 'stop_cluster; rm -rf "$WORK"' EXIT
start_cluster "$WORK/c" 3 1
"$MEND" load -g 1,2,3 --count "$N" --size 64 --timestamp 1000 -b 2048 >/dev/null

BASE=0  # bytes of an in-sync check (TLS handshakes included), subtracted per difference
row() { # label json
  python3 - "$1" "$2" "$BASE" <<'PY'
import json, sys
label, path, base = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(path))
n = len(r["differences"])
total = r["bytes_sent"] + r["bytes_received"]
per = f"{(total / n):.0f}" if n else "-"
over = f"{((total - base) / n):.0f}" if n and base else "-"
print(f"| {label} | {n} | {r['round_trips']} | {r['bytes_sent']} | {r['bytes_received']} | {per} | {over} | {r['seconds']:.3f} |")
PY
}
echo "mend verify, 3 groups x $N keys, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo "| case | differing found | round trips | bytes sent | bytes received | bytes per difference | per difference over in-sync | seconds |"
echo "|---|---|---|---|---|---|---|---|"
"$MEND" verify -g 1,2,3 --json >"$WORK/v.json" || true
row "identical, fingerprints" "$WORK/v.json"
BASE=$(python3 -c "import json;r=json.load(open('$WORK/v.json'));print(r['bytes_sent']+r['bytes_received'])")
"$MEND" verify -g 1,2,3 --json --full-scan >"$WORK/v.json" || true
row "identical, --full-scan" "$WORK/v.json"
done_keys=0
for d in 10 1000 10000; do
  [ "$d" -gt "$N" ] && continue
  add=$((d - done_keys))
  "$MEND" load -g 2 --count "$add" --start "$done_keys" --size 64 --timestamp 2000 >/dev/null
  done_keys=$d
  "$MEND" verify -g 1,2,3 --json >"$WORK/v.json" || true
  found=$(python3 -c "import json;print(len(json.load(open('$WORK/v.json'))['differences']))")
  [ "$found" = "$d" ] || { echo "expected $d differences, verify found $found" >&2; exit 1; }
  row "$d differing, fingerprints" "$WORK/v.json"
done
"$MEND" verify -g 1,2,3 --json --full-scan >"$WORK/v.json" || true
row "$done_keys differing, --full-scan" "$WORK/v.json"

# Write throughput with and without fingerprint maintenance (target: at least 90 %): the
# same 1 KiB writes with random ids into two stores, alternating rounds
# (engine/examples/write_throughput), in `mend load`'s requests of 4,096 and in commits of
# 65,536 (a node under load coalesces requests into commits of up to 128 Ki objects).
if [ "$QUICK" = 1 ]; then
  (cd "$ROOT" && cargo build -q -p mend-engine --example write_throughput)
  WT="$TARGET/debug/examples/write_throughput"; SMALL=8000; LARGE=16000
else
  (cd "$ROOT" && cargo build -q --release -p mend-engine --example write_throughput)
  WT="$TARGET/release/examples/write_throughput"; SMALL=160000; LARGE=1000000
fi
echo
"$WT" "$SMALL" 4096
echo
"$WT" "$LARGE" 65536
