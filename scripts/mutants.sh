#!/usr/bin/env bash
# Mutation testing (cargo-mutants, stable toolchain) of the code whose mistakes would matter most:
# the pure core, the enforcement plan and the nftables netlink encoder. Each mutant is built with
# the `mutants` profile (no debug info) and tested with its own crate's unit and integration tests.
#
#   scripts/mutants.sh                 # everything (jitgate-core alone is ~850 mutants, about an hour on 2 cores)
#   scripts/mutants.sh --shard 1/4     # core: every fourth mutant (a deterministic sample; the shards are 0/4 to 3/4);
#                                      # plan and encoder in full
#
# Results: target/mutants/<scope>/mutants.out/{caught,missed,timeout,unviable}.txt, and one summary
# line per scope on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --locked --version '^27'
shard=()
if [ "${1:-}" = "--shard" ]; then shard=(--shard "$2" --sharding round-robin); fi
out=target/mutants
mkdir -p "$out"
common=(--profile mutants --copy-target=false --cargo-test-arg=--lib --cargo-test-arg=--tests -j 1 --no-shuffle)
run() {
    local scope=$1; shift
    # cargo mutants exits non-zero when a mutant is missed; the summary says how many.
    cargo mutants "${common[@]}" -o "$out/$scope" "$@" >"$out/$scope.log" 2>&1 || true
    local d=$out/$scope/mutants.out
    local caught missed timeout unviable
    caught=$(wc -l <"$d/caught.txt"); missed=$(wc -l <"$d/missed.txt")
    timeout=$(wc -l <"$d/timeout.txt"); unviable=$(wc -l <"$d/unviable.txt")
    local tested=$((caught + missed + timeout))
    echo "$scope: $caught caught, $timeout timed out, $missed missed of $tested viable mutants ($unviable unviable): $(( (caught + timeout) * 1000 / (tested > 0 ? tested : 1) ))‰ caught"
}
run plan -p jitgate-enforce --file crates/jitgate-enforce/src/lib.rs
run encoder -p jitgate-enforce-nft --file crates/jitgate-enforce-nft/src/netlink.rs --file crates/jitgate-enforce-nft/src/elements.rs
run core -p jitgate-core "${shard[@]}"
