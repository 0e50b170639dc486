#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/ with AFL++ (cargo-afl, stable Rust).
#
#   scripts/fuzz.sh [seconds-per-target] [target ...]
#
# Builds the instrumented harness once (fuzz/target, or $JITGATE_FUZZ_TARGET_DIR), then runs each
# target (all of them when none is named) for the given time (default 300 s), $JITGATE_FUZZ_JOBS
# at once (default: the number of CPUs), starting from its committed corpus fuzz/corpus/<target>/.
# Findings go to fuzz/out/<target>/ (or $JITGATE_FUZZ_OUT). Every crash is copied to
# fuzz/regressions/<target>/crash-<sha256 prefix>, which `cargo test -p jitgate-fuzz-targets`
# replays from then on: commit it with the fix. Exits 1 when a run found a crash.
# JITGATE_FUZZ_LIGHT=1 builds without the `agent` feature (agent_messages then stops at the
# JSON, and the agent's HTTP stack is not built): the bounded run of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz/src/bin | sed -n 's/\.rs$//p')
fi
jobs=${JITGATE_FUZZ_JOBS:-$(nproc)}
build_dir=${JITGATE_FUZZ_TARGET_DIR:-$PWD/fuzz/target}
out_root=${JITGATE_FUZZ_OUT:-$PWD/fuzz/out}

# cargo-afl builds AFL++ itself (make and a C compiler); `config --build` is a no-op error once
# it is built for this toolchain.
if ! command -v cargo-afl >/dev/null 2>&1; then
    cargo install cargo-afl --locked --version '^0.18'
fi
cargo afl config --build >/dev/null 2>&1 || true

features=()
[ "${JITGATE_FUZZ_LIGHT:-0}" = 1 ] && features=(--no-default-features)
echo "fuzz: building the harness (release, instrumented) in $build_dir"
CARGO_TARGET_DIR="$build_dir" cargo afl build --release --locked --quiet --manifest-path fuzz/Cargo.toml "${features[@]}"

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_FAST_CAL=1

run() {
    local target=$1 out="$out_root/$1"
    rm -rf "$out"
    mkdir -p "$out"
    cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$target" -o "$out" -- "$build_dir/release/$target" \
        >"$out/afl.log" 2>&1 || { echo "fuzz: $target: afl-fuzz failed, see $out/afl.log"; tail -n 20 "$out/afl.log"; }
}

running=0
for target in "${targets[@]}"; do
    [ -f "fuzz/src/bin/$target.rs" ] || { echo "fuzz: no target $target"; exit 2; }
    run "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

found=0
failed=0
printf '%-18s %12s %8s %8s %8s\n' target execs corpus crashes hangs
for target in "${targets[@]}"; do
    dir="$out_root/$target/default"
    stat() { sed -n "s/^$1 *: *//p" "$dir/fuzzer_stats" 2>/dev/null | head -n 1; }
    [ -f "$dir/fuzzer_stats" ] || failed=1
    printf '%-18s %12s %8s %8s %8s\n' "$target" "$(stat execs_done)" "$(stat corpus_count)" \
        "$(stat saved_crashes)" "$(stat saved_hangs)"
    for crash in "$dir"/crashes/id:*; do
        [ -f "$crash" ] || continue
        mkdir -p "fuzz/regressions/$target"
        name="crash-$(sha256sum "$crash" | cut -c1-16)"
        if [ ! -f "fuzz/regressions/$target/$name" ]; then
            cp "$crash" "fuzz/regressions/$target/$name"
            echo "fuzz: $target: new crash fuzz/regressions/$target/$name"
        fi
        found=1
    done
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: a target did not run (see its afl.log under $out_root)"
    exit 1
fi
if [ "$found" -ne 0 ]; then
    echo "fuzz: crashes found; replay them with: cargo test -p jitgate-fuzz-targets --test corpus"
    exit 1
fi
