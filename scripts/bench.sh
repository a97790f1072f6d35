#!/usr/bin/env bash
# mend side by side with rsync and negentropy, on this machine, in one go:
#   scripts/bench.sh [--quick] [--out DIR]
#
#  sparse repair: N x 1 KiB objects in two replicas, 0.1 % differing (half rewritten newer,
#                 a quarter added, a quarter deleted in one replica) -> `mend dc` vs
#                 `rsync -a --delete` of the same objects as files (256 x 256 hex fan-out)
#                 to rsync's daemon on loopback (with and without TCP_NODELAY);
#  in-sync check: the same N identical -> `mend verify`, `mend verify --full-scan`,
#                 `rsync --dry-run`;
#  bulk:          an empty replica receiving B bytes of 64 KiB objects -> `mend dc` vs rsync,
#                 plain and `--fsync` (mend's nodes commit through redb, which fsyncs); and
#                 the disk itself: `dd` of B bytes with `conv=fdatasync` into the same file
#                 system, the bound of a copy that is durable when it ends;
#  reconciliation bytes: two sets of R ids differing by d (half on each side) -> mend's
#                 fingerprint exchange vs the negentropy crate (engine example
#                 reconcile_vs_negentropy), plus mend verify on real nodes for the sparse d.
# Default N = 1,000,000, B = 2 GiB, R = 1,000,000, d = 10, 1000, 100000, median of 3 runs
# (release build). --quick (CI: the script must not rot): N = 20,000, B = 64 MiB,
# R = 50,000, one run, the debug build; every mend repair is followed by `mend verify`, every
# rsync run's counts are checked and its trees compared.
# Prints one markdown table; writes it as CSV to DIR/bench.csv and draws DIR/bench.png
# (DIR: target/bench). Installs what it needs: rsync and GNU time (apt), matplotlib (pip).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/target/bench"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) OUT="${args[$((i + 1))]}"; i=$((i + 1)) ;;
    --out=*) OUT="${args[$i]#--out=}" ;;
    --quick) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument ${args[$i]}" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# ---- what the benchmark needs --------------------------------------------------------
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_pkgs=()
command -v rsync >/dev/null || need_pkgs+=(rsync)
[ -x /usr/bin/time ] || need_pkgs+=(time)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "installing ${need_pkgs[*]}" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_pkgs[@]}" >&2
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "installing matplotlib" >&2
  python3 -m pip install -q --user matplotlib >&2 || python3 -m pip install -q matplotlib >&2
fi

source "$ROOT/scripts/lib.sh" # builds mend (debug for --quick), defines MEND, NODE_PID
if [ "$QUICK" = 1 ]; then
  (cd "$ROOT" && cargo build -q -p mend-engine --example reconcile_vs_negentropy)
  RECONCILE="$TARGET/debug/examples/reconcile_vs_negentropy"
  N=20000; BULK=$((64 << 20)); RUNS=1; RN=50000; DS=10,1000,10000
else
  (cd "$ROOT" && cargo build -q --release -p mend-engine --example reconcile_vs_negentropy)
  RECONCILE="$TARGET/release/examples/reconcile_vs_negentropy"
  N=1000000; BULK=$((2 << 30)); RUNS=3; RN=1000000; DS=10,1000,100000
fi
# For trying intermediate sizes by hand.
N=${BENCH_N:-$N}; BULK=${BENCH_BULK:-$BULK}; RUNS=${BENCH_RUNS:-$RUNS}
D=$((N / 1000)); REW=$((D / 2)); DEL=$((D / 4)); ADD=$((D - REW - DEL))
COUNT=$((BULK / 65536))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mend-bench.XXXXXX")
RSYNCD_PID=""
cleanup() {
  stop_rsyncd || true
  stop_cluster
  echo "removing $WORK" >&2
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "bench: $*" >&2; exit 1; }
now() { date +%s.%N; }
phase() { echo "== $* [$(date +%T), load $(uptime | sed 's/.*load average: //')]" >&2; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maxof() { printf '%s\n' "$@" | sort -g | tail -1; }

CSV="$OUT/bench.csv"
echo "section,case,tool,n,runs,wall_s,wall_s_each,mb_per_s,wire_bytes,round_trips,rss_client_kib,rss_server_kib,check" >"$CSV"
emit() { # section case tool n runs wall_s wall_each mb/s wire round_trips rss_client rss_server check
  python3 -c 'import csv, sys; csv.writer(open(sys.argv[1], "a", newline="")).writerow(sys.argv[2:])' "$CSV" "$@"
}

# ---- file trees for rsync --------------------------------------------------------------
# 256 x 256 directories as in BASELINES.md; --quick uses 256 x 16 (deleting directories is
# slow on this machine's ext4, mounted with `discard`).
FAN2=256; [ "$QUICK" = 1 ] && FAN2=16
export FAN2
cat >"$WORK/tree.py" <<'PY'
# The objects of the mend replicas as files: key obj-I -> HH/HH/obj-I, the two directory
# levels from the key's hash (short names, as rsync's file list would carry for real keys).
import hashlib, os, sys

FAN2 = int(os.environ.get("FAN2", "256"))

def path(root, key):
    h = hashlib.sha256(key.encode()).hexdigest()
    return f"{root}/{h[:2]}/{int(h[2:4], 16) % FAN2:02x}/{key}"

def write(p, data, t):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
    os.utime(p, ns=(t, t))

def dirs(root, t=None):
    for a in range(256):
        for b in range(FAN2):
            d = f"{root}/{a:02x}/{b:02x}"
            os.makedirs(d, exist_ok=True)
            if t is not None:
                os.utime(d, ns=(t, t))
        if t is not None:
            os.utime(f"{root}/{a:02x}", ns=(t, t))
    if t is not None:
        os.utime(root, ns=(t, t))

cmd = sys.argv[1]
if cmd == "init":  # N ROOT... : the same N objects of 1 KiB in every root
    n, roots = int(sys.argv[2]), sys.argv[3:]
    t = 1000 * 10**9
    for r in roots:
        dirs(r)
    for i in range(n):
        data = os.urandom(1024)
        for r in roots:
            write(path(r, f"obj-{i}"), data, t)
    for r in roots:  # directories identical too, so an in-sync check has nothing to do
        dirs(r, t)
elif cmd == "diverge":  # ROOT N K REW DEL ADD: round K of the 0.1 % divergence
    root, n, k, rew, dele, add = sys.argv[2], *map(int, sys.argv[3:])
    d = rew + dele + add
    t = (2000 + k) * 10**9
    for i in range(k * d, k * d + rew):
        write(path(root, f"obj-{i}"), os.urandom(1024), t)
    for i in range(k * d + rew, k * d + rew + dele):
        os.unlink(path(root, f"obj-{i}"))
    for i in range(n + k * add, n + (k + 1) * add):
        write(path(root, f"obj-{i}"), os.urandom(1024), t)
elif cmd == "bulk":  # ROOT COUNT SIZE: COUNT files in 256 directories
    root, count, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for a in range(256):
        os.makedirs(f"{root}/{a:02x}", exist_ok=True)
    for i in range(count):
        h = hashlib.sha256(f"bulk-{i}".encode()).hexdigest()
        write(f"{root}/{h[:2]}/bulk-{i}", os.urandom(size), 1000 * 10**9)
PY

# ---- rsync daemon on loopback ------------------------------------------------------------
# A config in the work dir; `nodelay` adds `socket options = TCP_NODELAY`. The daemon runs
# under GNU time, which reports the largest RSS of the daemon and the processes it forked
# for the connections (the receiving side) when it stops.
RSYNC_PORT=""
start_rsyncd() { # nodelay|default
  local conf="$WORK/rsyncd-$1.conf"
  {
    echo "use chroot = no"
    echo "uid = $(id -u)"
    echo "gid = $(id -g)"
    echo "log file = $WORK/rsyncd-$1.log"
    [ "$1" = nodelay ] && echo "socket options = TCP_NODELAY"
    echo "[sparse]"
    echo "  path = $WORK/rsync/B"
    echo "  read only = no"
    echo "[bulk]"
    echo "  path = $WORK/rsync/bulkdst"
    echo "  read only = no"
  } >"$conf"
  local attempt
  for attempt in 1 2 3 4 5; do
    RSYNC_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    /usr/bin/time -f %M -o "$WORK/rsyncd.rss" \
      rsync --daemon --no-detach --address=127.0.0.1 --port="$RSYNC_PORT" --config="$conf" &
    RSYNCD_PID=$!
    local i
    for i in $(seq 50); do
      rsync "rsync://127.0.0.1:$RSYNC_PORT/" >/dev/null 2>&1 && return 0
      kill -0 "$RSYNCD_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_rsyncd || true
  done
  fail "the rsync daemon did not start; see $WORK/rsyncd-$1.log"
}
RSYNCD_RSS=0
stop_rsyncd() { # sets RSYNCD_RSS (KiB)
  [ -n "$RSYNCD_PID" ] || return 0
  local child
  child=$(pgrep -P "$RSYNCD_PID" || true)
  [ -n "$child" ] && kill -TERM $child 2>/dev/null
  wait "$RSYNCD_PID" 2>/dev/null || true
  RSYNCD_PID=""
  RSYNCD_RSS=$(tail -1 "$WORK/rsyncd.rss" 2>/dev/null | tr -dc 0-9)
  RSYNCD_RSS=${RSYNCD_RSS:-0}
}

# One rsync client run: sets WALL, WIRE (bytes sent + received from --stats), RSS (the
# client's peak, KiB), XFER (regular files transferred), DELETED (files deleted).
rsync_run() {
  local t0 t1
  t0=$(now)
  /usr/bin/time -f %M -o "$WORK/rsync.rss" rsync "$@" >"$WORK/rsync.out" 2>"$WORK/rsync.err" ||
    { cat "$WORK/rsync.err" >&2; fail "rsync $* failed"; }
  t1=$(now)
  WALL=$(elapsed "$t0" "$t1")
  stat_of() { awk -F': ' -v k="$1" '$1 == k { split($2, a, " "); gsub(",", "", a[1]); print a[1] }' "$WORK/rsync.out"; }
  WIRE=$(($(stat_of "Total bytes sent") + $(stat_of "Total bytes received")))
  XFER=$(stat_of "Number of regular files transferred")
  DELETED=$(stat_of "Number of deleted files")
  RSS=$(tail -1 "$WORK/rsync.rss" | tr -dc 0-9)
}

# ---- mend nodes (start_nodes / stop_cluster: lib.sh) -------------------------------
# The node process's peak RSS since the last reset (VmHWM; reset through clear_refs).
node_rss_reset() { echo 5 >"/proc/$NODE_PID/clear_refs" 2>/dev/null || true; }
node_rss() { awk '/VmHWM/ { print $2 }' "/proc/$NODE_PID/status" 2>/dev/null || echo 0; }

# One mend command with --stats json / --json: sets WALL, RSS (the mend process's peak),
# NRSS (the nodes' process peak during the run), JSON (its output file).
mend_run() {
  local t0 t1 rc=0
  node_rss_reset
  t0=$(now)
  MEND_REPORT_RSS=1 "$MEND" "$@" >"$WORK/mend.json" 2>"$WORK/mend.err" || rc=$?
  t1=$(now)
  # verify exits 1 when replicas differ: that is an answer, not a failure.
  if [ "$rc" != 0 ] && ! { [ "$1" = verify ] && [ "$rc" = 1 ]; }; then
    cat "$WORK/mend.err" >&2
    fail "mend $* failed ($rc)"
  fi
  WALL=$(elapsed "$t0" "$t1")
  RSS=$(sed -n 's/^mend: peak_rss_kib //p' "$WORK/mend.err")
  NRSS=$(node_rss)
  JSON="$WORK/mend.json"
}
jget() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, r))' "$JSON" "$1"; }
mend_in_sync() { # GROUPS
  "$MEND" verify -g "$1" >"$WORK/verify.txt" 2>&1 || { tail -5 "$WORK/verify.txt" >&2; fail "mend verify -g $1: not in sync after the repair"; }
}

BENCH_T0=$(now)
echo "mend vs rsync vs negentropy: N = $N, bulk $((BULK >> 20)) MiB, $RUNS run(s) each, $(nproc) cores, $(date -u +%Y-%m-%d)" >&2
echo "load before: $(uptime)" >&2

# ==== sparse repair and in-sync check =====================================================
phase "sparse: writing $N x 1 KiB objects into two mend groups and two file trees"
"$MEND" init --dir "$WORK/c" --groups 2 --nodes-per-group 1 --base-port 0 >/dev/null
start_nodes "$WORK/c"
"$MEND" load -g 1,2 --count "$N" --size 1024 --timestamp 1000 -b 1024 >/dev/null
mkdir -p "$WORK/rsync"
python3 "$WORK/tree.py" init "$N" "$WORK/rsync/A" "$WORK/rsync/B"
[ "$(find "$WORK/rsync/B" -type f | wc -l)" = "$N" ] || fail "the file tree does not hold $N files"

# Round K of the divergence in mend's group 1: REW keys rewritten with a newer timestamp,
# ADD keys added, DEL keys deleted (tombstones); the same indices as tree.py diverge.
mend_diverge() { # K
  local k=$1 ts=$((2000 + $1)) i
  "$MEND" load -g 1 --count "$REW" --start $((k * D)) --size 1024 --timestamp "$ts" >/dev/null
  "$MEND" load -g 1 --count "$ADD" --start $((N + k * ADD)) --size 1024 --timestamp "$ts" >/dev/null
  for ((i = k * D + REW; i < k * D + REW + DEL; i++)); do
    "$MEND" del -g 1 "obj-$i" --timestamp "$ts" >/dev/null
  done
}

phase "sparse: $RUNS round(s) of $D differences, mend dc and rsync"
mend_wall=(); mend_wire=(); mend_rss=(); mend_nrss=()
rs_wall=(); rs_wire=(); rs_rss=()
start_rsyncd nodelay
for ((k = 0; k < RUNS; k++)); do
  mend_diverge "$k"
  if [ "$k" = 0 ]; then
    # The same difference measured by mend's comparison alone on real nodes (QUIC, TLS
    # handshakes included): beside the in-memory reconciliation figures below.
    mend_run verify -g 1,2 --json
    found=$(jget 'len(differences)')
    [ "$found" = "$D" ] || fail "mend verify found $found differences, expected $D"
    emit reconcile "d=$D ($N ids; real nodes)" "mend verify (QUIC)" "$N" 1 "$WALL" "$WALL" "" \
      "$(jget 'bytes_sent + bytes_received')" "$(jget 'round_trips')" "$RSS" "$NRSS" "found $found"
  fi
  mend_run dc -g 1,2 --stats json
  copied=$(jget copied)
  [ "$copied" = "$D" ] || fail "mend dc copied $copied versions, expected $D"
  mend_in_sync 1,2
  mend_wall+=("$WALL"); mend_rss+=("$RSS"); mend_nrss+=("$NRSS")
  mend_wire+=("$(jget 'bytes_sent + bytes_received + node_to_node_bytes')")

  python3 "$WORK/tree.py" diverge "$WORK/rsync/A" "$N" "$k" "$REW" "$DEL" "$ADD"
  rsync_run -a --delete --stats --sockopts=TCP_NODELAY "$WORK/rsync/A/" "rsync://127.0.0.1:$RSYNC_PORT/sparse/"
  [ "$XFER" = $((REW + ADD)) ] && [ "$DELETED" = "$DEL" ] ||
    fail "rsync transferred $XFER files and deleted $DELETED, expected $((REW + ADD)) and $DEL"
  rs_wall+=("$WALL"); rs_wire+=("$WIRE"); rs_rss+=("$RSS")
done
if [ "$QUICK" = 1 ]; then
  diff -r "$WORK/rsync/A" "$WORK/rsync/B" >/dev/null || fail "rsync left the trees different"
fi

sparse_case="$N x 1 KiB; $D differing"
emit sparse "$sparse_case" "mend dc" "$N" "$RUNS" "$(median "${mend_wall[@]}")" "${mend_wall[*]}" "" \
  "$(median "${mend_wire[@]}")" "" "$(maxof "${mend_rss[@]}")" "$(maxof "${mend_nrss[@]}")" "copied $D; verify in sync"

# ---- in-sync check (rsync daemon with TCP_NODELAY still up) ------------------------------
phase "in-sync checks"
is_wall=(); is_wire=(); is_rss=()
for ((k = 0; k < RUNS; k++)); do
  rsync_run -a --delete --dry-run --stats --sockopts=TCP_NODELAY "$WORK/rsync/A/" "rsync://127.0.0.1:$RSYNC_PORT/sparse/"
  [ "$XFER" = 0 ] && [ "$DELETED" = 0 ] || fail "rsync --dry-run on identical trees would transfer $XFER and delete $DELETED"
  is_wall+=("$WALL"); is_wire+=("$WIRE"); is_rss+=("$RSS")
done
stop_rsyncd
emit sparse "$sparse_case" "rsync -a --delete (TCP_NODELAY)" "$N" "$RUNS" "$(median "${rs_wall[@]}")" "${rs_wall[*]}" "" \
  "$(median "${rs_wire[@]}")" "" "$(maxof "${rs_rss[@]}")" "$RSYNCD_RSS" "$((REW + ADD)) sent, $DEL deleted"
in_sync_case="$N identical"
emit in-sync "$in_sync_case" "rsync --dry-run (TCP_NODELAY)" "$N" "$RUNS" "$(median "${is_wall[@]}")" "${is_wall[*]}" "" \
  "$(median "${is_wire[@]}")" "" "$(maxof "${is_rss[@]}")" "$RSYNCD_RSS" "0 to send, 0 to delete"

# Out of the box: no TCP_NODELAY on either side (one run: Nagle and delayed ACKs).
start_rsyncd default
python3 "$WORK/tree.py" diverge "$WORK/rsync/A" "$N" "$RUNS" "$REW" "$DEL" "$ADD"
rsync_run -a --delete --stats "$WORK/rsync/A/" "rsync://127.0.0.1:$RSYNC_PORT/sparse/"
[ "$XFER" = $((REW + ADD)) ] && [ "$DELETED" = "$DEL" ] || fail "rsync (default socket options) transferred $XFER, deleted $DELETED"
nd_wall=$WALL; nd_wire=$WIRE; nd_rss=$RSS
stop_rsyncd
emit sparse "$sparse_case" "rsync -a --delete (default sockets)" "$N" 1 "$nd_wall" "$nd_wall" "" \
  "$nd_wire" "" "$nd_rss" "$RSYNCD_RSS" "$((REW + ADD)) sent, $DEL deleted"

for mode in fingerprints full-scan; do
  w=(); b=(); r=(); nr=(); rt=()
  extra=(); [ "$mode" = full-scan ] && extra=(--full-scan)
  for ((k = 0; k < RUNS; k++)); do
    mend_run verify -g 1,2 --json "${extra[@]}"
    [ "$(jget 'len(differences)')" = 0 ] || fail "mend verify ($mode) finds differences in replicas that are in sync"
    w+=("$WALL"); r+=("$RSS"); nr+=("$NRSS")
    b+=("$(jget 'bytes_sent + bytes_received')"); rt+=("$(jget 'round_trips')")
  done
  tool="mend verify"; [ "$mode" = full-scan ] && tool="mend verify --full-scan"
  emit in-sync "$in_sync_case" "$tool" "$N" "$RUNS" "$(median "${w[@]}")" "${w[*]}" "" \
    "$(median "${b[@]}")" "$(median "${rt[@]}")" "$(maxof "${r[@]}")" "$(maxof "${nr[@]}")" "in sync"
done
stop_cluster
# The trees and the cluster stay until the end: deleting them now would leave the disk busy
# discarding blocks during the bulk runs.

# ==== bulk ================================================================================
phase "bulk: $RUNS round(s) of $COUNT x 64 KiB into an empty replica: disk, mend dc, rsync, rsync --fsync"
bulk_case="$COUNT x 64 KiB into an empty replica"
# Each round takes the disk's own rate, then mend, then both rsyncs, one right after the
# other: this machine's speed drifts by half within minutes, and tools measured minutes apart
# would be compared across that drift.
"$MEND" init --dir "$WORK/b" --groups 2 --nodes-per-group 1 --base-port 0 >/dev/null
start_nodes "$WORK/b"
"$MEND" load -g 1 --count "$COUNT" --size 65536 --prefix bulk- -b 32 >/dev/null
stop_cluster
python3 "$WORK/tree.py" bulk "$WORK/rsync/bulksrc" "$COUNT" 65536
mkdir -p "$WORK/rsync/bulkdst"
start_rsyncd nodelay
dw=(); dmbs=()
mw=(); mb=(); mr=(); mnr=(); mmbs=()
declare -A rw rb rr rmbs round_mbs
mbs_of() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }
for ((k = 0; k < RUNS; k++)); do
  # The disk: what it takes the same bytes at when they must be on it at the end.
  sync
  t0=$(now)
  dd if=/dev/zero of="$WORK/disk.bin" bs=4M count=$((BULK >> 22)) conv=fdatasync status=none ||
    fail "dd into $WORK failed"
  t1=$(now)
  rm -f "$WORK/disk.bin"
  dw+=("$(elapsed "$t0" "$t1")"); dmbs+=("$(mbs_of "$BULK" "${dw[-1]}")")
  # mend, into an emptied group 2.
  rm -rf "$WORK/b/data/g2n1"/*
  sync
  start_nodes "$WORK/b"
  mend_run dc -g 1,2 -n 32 --stats json
  [ "$(jget copied)" = "$COUNT" ] || fail "mend dc copied $(jget copied) of $COUNT"
  mend_in_sync 1,2
  stop_cluster
  mw+=("$WALL"); mr+=("$RSS"); mnr+=("$NRSS")
  mb+=("$(jget 'bytes_sent + bytes_received + node_to_node_bytes')")
  mmbs+=("$(mbs_of "$(jget bytes)" "$WALL")")
  # rsync, into an emptied tree, plain and with --fsync.
  for variant in plain fsync; do
    extra=(); [ "$variant" = fsync ] && extra=(--fsync)
    rm -rf "$WORK/rsync/bulkdst"/*
    sync
    rsync_run -a --stats --sockopts=TCP_NODELAY "${extra[@]}" "$WORK/rsync/bulksrc/" "rsync://127.0.0.1:$RSYNC_PORT/bulk/"
    [ "$XFER" = "$COUNT" ] || fail "rsync transferred $XFER of $COUNT files"
    [ "$(find "$WORK/rsync/bulkdst" -type f | wc -l)" = "$COUNT" ] || fail "the bulk destination does not hold $COUNT files"
    if [ "$QUICK" = 1 ]; then
      diff -r "$WORK/rsync/bulksrc" "$WORK/rsync/bulkdst" >/dev/null || fail "bulk trees differ after rsync $variant"
    fi
    round_mbs[$variant]=$(mbs_of "$BULK" "$WALL")
    rw[$variant]+="$WALL "; rb[$variant]+="$WIRE "; rr[$variant]+="$RSS "
    rmbs[$variant]+="${round_mbs[$variant]} "
  done
  echo "  round $((k + 1)): disk ${dmbs[-1]}, mend ${mmbs[-1]}, rsync ${round_mbs[plain]}, rsync --fsync ${round_mbs[fsync]} MB/s" >&2
done
stop_rsyncd
emit bulk "$bulk_case" "disk: dd conv=fdatasync" "$RUNS" "$RUNS" "$(median "${dw[@]}")" "${dw[*]}" "$(median "${dmbs[@]}")" \
  "" "" "" "" "$((BULK >> 20)) MiB written and flushed (a durable copy's bound)"
emit bulk "$bulk_case" "mend dc (redb: fsync)" "$COUNT" "$RUNS" "$(median "${mw[@]}")" "${mw[*]}" "$(median "${mmbs[@]}")" \
  "$(median "${mb[@]}")" "" "$(maxof "${mr[@]}")" "$(maxof "${mnr[@]}")" "copied $COUNT; verify in sync"
for variant in plain fsync; do
  tool="rsync -a (TCP_NODELAY)"; [ "$variant" = fsync ] && tool="rsync -a --fsync (TCP_NODELAY)"
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  emit bulk "$bulk_case" "$tool" "$COUNT" "$RUNS" "$(median ${rw[$variant]})" "${rw[$variant]% }" "$(median ${rmbs[$variant]})" \
    "$(median ${rb[$variant]})" "" "$(maxof ${rr[$variant]})" "$RSYNCD_RSS" "$COUNT files sent"
done

# ==== reconciliation bytes: mend vs negentropy, in memory =================================
phase "reconciliation: $RN ids, d = $DS"
"$RECONCILE" "$RN" "$DS" >"$WORK/reconcile.csv" 2>"$WORK/reconcile.err" ||
  { cat "$WORK/reconcile.err" >&2; fail "reconcile_vs_negentropy failed"; }
python3 - "$WORK/reconcile.csv" "$CSV" <<'PY'
import csv, sys
out = csv.writer(open(sys.argv[2], "a", newline=""))
for r in csv.DictReader(open(sys.argv[1])):
    case = f"d={r['d']} ({r['n']} ids; in memory)"
    out.writerow(["reconcile", case, f"negentropy 0.5 ({r['negentropy_id_bytes']}-byte ids)", r["n"], 1,
                  "", "", "", r["negentropy_bytes"], r["negentropy_round_trips"], "", "", f"{r['d']} found"])
    one = int(r["mend_one_side_bytes"])
    out.writerow(["reconcile", case, f"mend fingerprints ({r['mend_id_bytes']}-byte ids)", r["n"], 1,
                  "", "", "", r["mend_bytes"], r["mend_round_trips"], "", "",
                  f"{r['d']} found; both replicas asked by one client; with one replica only: {one:,} B "
                  f"({one / int(r['negentropy_bytes']):.2f}x negentropy)"])
PY

# ==== the table, the targets, the chart ===================================================
BENCH_SECONDS=$(elapsed "$BENCH_T0" "$(now)")
LOAD="$(uptime | sed 's/.*load average: //')"
python3 - "$CSV" "$(date -u +%Y-%m-%d)" "$(nproc)" "$LOAD" "$BENCH_SECONDS" "$QUICK" <<'PY' | tee "$OUT/bench.md"
import csv, sys
path, date, nproc, load, secs, quick = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
# One order for the CSV, the table and the chart: by section, mend first inside each and the
# disk's own rate last.
order = ["sparse", "in-sync", "bulk", "reconcile"]
rank = lambda r: (0 if r["section"] == "reconcile" or r["tool"].startswith("mend")  # noqa: E731
                  else 2 if r["tool"].startswith("disk") else 1)
rows = [r for _, _, _, r in sorted(
    (order.index(r["section"]), rank(r), i, r) for i, r in enumerate(rows))]
with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
print(f"mend vs rsync vs negentropy — {date}, {nproc} cores, {int(mem) // 2**20} GiB, "
      f"load average {load} (at the end), {'--quick' if quick == '1' else 'full'} run, {float(secs):.0f} s")
print()
print("| case | tool | runs | median wall s | MB/s | bytes on the wire | round trips | peak RSS client MiB | peak RSS server MiB | check |")
print("|---|---|---|---|---|---|---|---|---|---|")
mib = lambda k: f"{int(k) / 1024:.0f}" if k else "-"
num = lambda v: f"{int(float(v)):,}" if v else "-"
for r in rows:
    print(f"| {r['section']}: {r['case']} | {r['tool']} | {r['runs']} | {r['wall_s'] or '-'} | {r['mb_per_s'] or '-'} | "
          f"{num(r['wire_bytes'])} | {r['round_trips'] or '-'} | {mib(r['rss_client_kib'])} | {mib(r['rss_server_kib'])} | {r['check']} |")
print()
print("Peak RSS: client = the `mend dc`/`mend verify` process, or the rsync client (sender); "
      "server = the `mend node --all` process holding both replicas' nodes (VmHWM, reset before each run), "
      "or the rsync daemon's largest process (receiver; GNU time). mend's wire bytes: QUIC payload both ways "
      "plus node-to-node pushes; rsync's: `--stats` total bytes sent + received.")
print()
def one(section, tool_prefix):
    return next((r for r in rows if r["section"] == section and r["tool"].startswith(tool_prefix)), None)
def check(name, ok, detail):
    print(f"- {'MET' if ok else 'NOT MET'}: {name} — {detail}")
print("Targets (set for the full sizes; a --quick run only shows that the script works):" if quick == "1" else "Targets:")
m, s = one("sparse", "mend dc"), one("sparse", "rsync -a --delete (TCP_NODELAY)")
sp = float(s["wall_s"]) / float(m["wall_s"]); by = float(s["wire_bytes"]) / float(m["wire_bytes"])
check("sparse repair ≥ 5× faster than rsync", sp >= 5, f"{sp:.1f}× ({m['wall_s']} s vs {s['wall_s']} s)")
check("sparse repair ≥ 10× fewer bytes than rsync", by >= 10, f"{by:.1f}× ({num(m['wire_bytes'])} B vs {num(s['wire_bytes'])} B)")
m, p, f = one("bulk", "mend dc"), one("bulk", "rsync -a (TCP"), one("bulk", "rsync -a --fsync")
# The same bytes in each round, taken one after the other: the faster is the shorter wall.
rounds = list(zip(m["wall_s_each"].split(), p["wall_s_each"].split()))
ahead = sum(float(mw) <= float(pw) for mw, pw in rounds)
check("bulk at least as fast as rsync", float(m["mb_per_s"]) >= float(p["mb_per_s"]),
      f"mend {m['mb_per_s']} MB/s vs rsync {p['mb_per_s']} MB/s (page cache), {f['mb_per_s']} MB/s (--fsync), "
      f"medians; mend as fast or faster in {ahead} of {len(rounds)} rounds")
d = one("bulk", "disk:")
print(f"  (the disk took the same bytes with fdatasync at {d['mb_per_s']} MB/s: mend copied at "
      f"{float(m['mb_per_s']) / float(d['mb_per_s']):.0%} of that, which bounds a copy that is durable when it ends)")
for r in rows:
    if r["section"] == "reconcile" and r["tool"].startswith("mend fingerprints"):
        n = next(x for x in rows if x["case"] == r["case"] and x["tool"].startswith("negentropy"))
        ratio = float(r["wire_bytes"]) / float(n["wire_bytes"])
        check(f"reconciliation {r['case']} within 1.5× of negentropy's bytes", ratio <= 1.5,
              f"{ratio:.2f}× ({num(r['wire_bytes'])} B in {r['round_trips']} round trips vs "
              f"{num(n['wire_bytes'])} B in {n['round_trips']})")
PY
python3 "$ROOT/scripts/bench_chart.py" "$CSV" "$OUT/bench.png"
echo "wrote $CSV, $OUT/bench.md, $OUT/bench.png ($BENCH_SECONDS s)" >&2
