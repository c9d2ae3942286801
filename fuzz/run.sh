#!/usr/bin/env bash
# Give each fuzz target a short, bounded libFuzzer run (CI: `fuzz/run.sh 20`).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 20 s each, every target
#
# Works on the stable toolchain: libFuzzer comes from the libfuzzer-sys crate
# (built with the system C++ compiler), coverage instrumentation uses the
# stable `-Cpasses=sancov-module` flags, and AddressSanitizer is switched on
# with RUSTC_BOOTSTRAP=1 (`-Zsanitizer=address`; the runtime ships with the
# stable rust-std). No cargo-fuzz install is needed; `cargo fuzz run TARGET`
# works too where it is installed. Set CERTSYNC_FUZZ_ASAN=0 to build
# without ASan (faster, still catches panics, hangs and memory blow-ups).
#
# Fails (non-zero) on a crash/panic, a timeout (-timeout, per input), or a
# memory blow-up (-rss_limit_mb, -malloc_limit_mb). A failing input is kept
# in fuzz/artifacts/<target>/ to reproduce: `fuzz/run.sh` prints the command.
# New corpus entries go to a scratch dir, so the committed seeds stay small.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
secs="${1:-20}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(protocol_reader bundle_parse validate)
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers=yes"
# A smaller quarantine keeps ASan's own memory well under -rss_limit_mb.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"
if [ "${CERTSYNC_FUZZ_ASAN:-1}" = 1 ]; then
  flags+=" -Zsanitizer=address"
  export RUSTC_BOOTSTRAP=1
fi

# Real certificates and keys of every type, made now (never committed).
"$here/make-corpus.sh" >/dev/null

echo "fuzz: building ${targets[*]} (${triple}, ASan=${CERTSYNC_FUZZ_ASAN:-1})"
RUSTFLAGS="$flags" cargo build --release --target "$triple" \
  --target-dir "$here/target" $(printf -- '--bin %s ' "${targets[@]}")

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "$here/artifacts/$t" "$here/corpus/$t"
  log="$scratch/$t.log"
  echo "fuzz: $t for ${secs}s"
  set +e
  "$here/target/$triple/release/$t" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=512 \
    -max_len=262144 -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$t/" \
    "$scratch/$t" "$here/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
  echo "fuzz: $t: exit $rc, ${runs:-?} runs, ${rate:-?} exec/s, peak RSS ${rss:-?} MB, ${cov:-cov: ?}"
  if [ "$rc" -ne 0 ]; then
    status=1
    tail -n 60 "$log"
    echo "fuzz: $t FAILED; reproduce with: $here/target/$triple/release/$t $here/artifacts/$t/<file>"
  fi
done
exit "$status"
