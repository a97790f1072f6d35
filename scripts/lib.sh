# Shared by the benchmark scripts: build mend, start a cluster on loopback, wait for it.
# Source it; it defines MEND, start_cluster DIR GROUPS NODES_PER_GROUP, stop_cluster.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo builds: CARGO_TARGET_DIR if set (a second checkout beside another build).
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# --quick runs a small version with the debug build (CI: the script must not rot);
# otherwise the release build.
QUICK=0
for a in "$@"; do [ "$a" = "--quick" ] && QUICK=1; done
if [ "$QUICK" = 1 ]; then
  (cd "$ROOT" && cargo build -q -p mend-cli)
  MEND="$TARGET/debug/mend"
else
  (cd "$ROOT" && cargo build -q --release -p mend-cli)
  MEND="$TARGET/release/mend"
fi

NODE_PID=""
start_cluster() { # DIR GROUPS NODES_PER_GROUP
  local dir=$1 groups=$2 per=$3
  "$MEND" init --dir "$dir" --groups "$groups" --nodes-per-group "$per" --base-port 0 >/dev/null
  start_nodes "$dir"
}

# Starts (or restarts) every node of the cluster dir DIR in one process, sets NODE_PID and
# MEND_CLUSTER. Readiness: one "ready" line per node of cluster.toml, read from the node
# process itself.
start_nodes() { # DIR
  local dir=$1 want seen=0 line
  rm -f "$dir/.ready"
  mkfifo "$dir/.ready"
  "$MEND" node --all --cluster "$dir" >"$dir/.ready" 2>>"$dir/nodes.log" &
  NODE_PID=$!
  want=$(grep -c '^\[\[node\]\]' "$dir/cluster.toml")
  exec 3<"$dir/.ready"
  while [ "$seen" -lt "$want" ] && read -r line <&3; do
    case "$line" in ready*) seen=$((seen + 1)) ;; esac
  done
  if [ "$seen" -lt "$want" ]; then
    echo "nodes did not start; see $dir/nodes.log" >&2
    cat "$dir/nodes.log" >&2
    exit 1
  fi
  export MEND_CLUSTER="$dir"
}

stop_cluster() {
  if [ -n "$NODE_PID" ]; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
  fi
  { exec 3<&-; } 2>/dev/null || true
}

node_peak_rss_kib() {
  awk '/VmHWM/ {print $2}' "/proc/$NODE_PID/status" 2>/dev/null || echo "?"
}
