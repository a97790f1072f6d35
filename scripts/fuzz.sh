#!/usr/bin/env bash
# Fuzzes mend's parsers of untrusted bytes, each for a bounded time; fails if any target
# finds a crash (a panic, a broken property, an allocation bomb or a hang), printing the
# input libFuzzer saved and the command that replays it.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]    (default: 30 s per target, all targets)
#
# Targets (fuzz/fuzz_targets/, properties in each file's header):
#   wire_frame        engine/src/wire.rs     decode_payload / read_frame, Request and Response
#   dump_parse        engine/src/dump.rs     dump::parse, against a model
#   metafile_read     engine/src/metafile.rs MetaReader and summarize on arbitrary files
#   metafile_mutate   engine/src/metafile.rs valid files, then damaged (and re-CRC'd)
#   plugin_decisions  policies/src/exec.rs   exec::parse_line, a plugin's answer line
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET, written by
# `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds`) and keeps
# what it finds in fuzz/corpus/TARGET (not committed). A crash lands in
# fuzz/artifacts/TARGET/; fix it and add the input as a #[test] in the crate it is about.
#
# Why these flags, on a stable toolchain (no nightly can be fetched here):
# - `--sanitizer none` (-s none). cargo-fuzz builds with AddressSanitizer by default, which
#   takes `-Zsanitizer=address`, a nightly-only flag. With no sanitizer every flag it
#   passes to rustc (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`,
#   `--cfg fuzzing`) is stable, so stable rustc builds libFuzzer targets as they are: no
#   nightly, no RUSTC_BOOTSTRAP. What is lost is ASan's check of unsafe code; the crates
#   fuzzed forbid unsafe code, and a panic, an overflow or a broken assertion is still a
#   crash.
# - `--debug-assertions` (-a): overflow checks and debug assertions, so arithmetic
#   overflow on hostile lengths is a crash rather than a wrap.
# - Memory: libFuzzer's `-malloc_limit_mb` relies on the sanitizer runtime's malloc
#   hooks, which a `-s none` build has not, so the fuzz crate's global allocator
#   (fuzz/src/lib.rs) counts the heap: the targets assert each decoder's limit, and past
#   1 GiB live it aborts, which libFuzzer reports as a crash. `-rss_limit_mb` stays as the
#   backstop; `-timeout` makes a hang a crash.
# - TMPDIR on /dev/shm: the metadata-file targets rewrite a scratch file per input; on
#   ext4, truncating and rewriting a file forces it to disk (auto_da_alloc), which is
#   ~100x slower than tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds)
            seconds="${2:?--seconds takes a number}"
            shift 2
            ;;
        --seconds=*)
            seconds="${1#--seconds=}"
            shift
            ;;
        -h | --help)
            sed -n '2,19p' "$0"
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $1" >&2
            exit 2
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done
# `cargo fuzz build` takes one target or none (all of them).
to_build=("${targets[@]}")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wire_frame dump_parse metafile_read metafile_mutate plugin_decisions)
    to_build=("")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# fuzz/Cargo.lock is committed, like the main one, so the fuzzed build uses pinned
# versions. It goes stale whenever the engine or the policies gain a dependency; that
# should not fail CI's fuzzing (cargo then only adds the missing entries, never moves a
# pinned one), but it is said loudly so that the lock is refreshed and committed.
host="$(rustc -vV | sed -n 's/^host: //p')"
if ! cargo fetch --locked --quiet --manifest-path fuzz/Cargo.toml --target "$host" 2>/dev/null; then
    echo "fuzz.sh: WARNING: fuzz/Cargo.lock is out of date; refresh and commit it with:" >&2
    echo "    cargo update --manifest-path fuzz/Cargo.toml --workspace" >&2
    cargo fetch --quiet --manifest-path fuzz/Cargo.toml --target "$host"
fi

scratch_parent=/dev/shm
[ -d "$scratch_parent" ] && [ -w "$scratch_parent" ] || scratch_parent="${TMPDIR:-/tmp}"
scratch="$(mktemp -d "$scratch_parent/mend-fuzz.XXXXXX")"
logs="$(mktemp -d "${TMPDIR:-/tmp}/mend-fuzz-logs.XXXXXX")"
trap 'rm -rf "$scratch" "$logs"' EXIT

# The committed seeds must be what fuzz/examples/seeds.rs writes today: after a format
# change they would start the fuzzer from shapes the decoders no longer accept (this once
# went unnoticed, and the example itself stopped compiling).
echo "== seeds are current"
cargo run --quiet --manifest-path fuzz/Cargo.toml --example seeds -- "$scratch/seeds"
if ! diff -r fuzz/seeds "$scratch/seeds" >"$logs/seeds.diff"; then
    cat "$logs/seeds.diff" >&2
    echo "fuzz.sh: fuzz/seeds is stale; regenerate and commit it with:" >&2
    echo "    cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds" >&2
    exit 1
fi

build=(-s none -a)
echo "== build"
started=$SECONDS
for target in "${to_build[@]}"; do
    status=0
    # shellcheck disable=SC2086 # an empty $target builds every target
    cargo fuzz build "${build[@]}" $target >"$logs/build.log" 2>&1 || status=$?
    grep -Ev '^ +(Compiling|Downloaded|Downloading) ' "$logs/build.log" || true
    if [ "$status" -ne 0 ]; then
        echo "fuzz.sh: the build failed" >&2
        exit 1
    fi
done
echo "built in $((SECONDS - started)) s"

failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    args=(
        -max_total_time="$seconds"
        -timeout=10
        -rss_limit_mb=2048
        -malloc_limit_mb=1024
        -print_final_stats=1
    )
    [ -f "fuzz/dicts/$target.dict" ] && args+=(-dict="fuzz/dicts/$target.dict")
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    echo "== $target (${seconds} s)"
    log="$logs/$target.log"
    status=0
    TMPDIR="$scratch" cargo fuzz run "${build[@]}" "$target" \
        "fuzz/corpus/$target" "${seeds[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    corpus="$(sed -n 's/^#[0-9]*[[:space:]]*DONE.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' "$log" | tail -1)"
    if [ "$status" -eq 0 ]; then
        echo "$target: ok, ${execs:-?} inputs run, corpus ${corpus:-?}"
    else
        failed+=("$target")
        echo "$target: FAILED (status $status) after ${execs:-?} inputs"
        # The panic's place and message, or libFuzzer's word for what else went wrong.
        grep -E -A1 'panicked at' "$log" | head -6 || true
        grep -E 'ERROR: libFuzzer|^SUMMARY|^mend-fuzz:' "$log" | head -6 || true
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
        if [ -n "$artifact" ]; then
            echo "crashing input: $artifact"
            echo "replay: cargo fuzz run ${build[*]} $target $artifact"
        else
            echo "--- last lines of libFuzzer's output"
            tail -30 "$log"
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no crashes in ${#targets[@]} targets (${seconds} s each)"
