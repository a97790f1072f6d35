#!/usr/bin/env bash
# The project's test command: every crate's unit, property and integration tests.
# Integration tests start real nodes on loopback (port 0) in temp dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
