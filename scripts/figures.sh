#!/usr/bin/env bash
# Runs every `jitgate bench …` with the release binary and writes FIGURES.md: one table of every
# figure (benchmark · figure · yardstick or ratio measured in the same run · command), with the
# machine and the date, and each benchmark's whole output after it.
#
#   sudo scripts/figures.sh              # builds the release binary first
#   sudo JITGATE_BIN=/path/to/jitgate JITGATE_BIN_COMMIT=abc1234 scripts/figures.sh
#   scripts/figures.sh --refresh-mutants # only copies docs/mutants.md's figures into FIGURES.md
#
# The namespace benchmarks need root, `ip` and `nft`; `bench replicas` a PostgreSQL server
# (JITGATE_BENCH_PG, default postgres://postgres@127.0.0.1:5432); `bench fwknop` Debian's
# fwknop-server and fwknop-client; `bench connector` moto's EC2 server (scripts/moto-venv.sh);
# `bench rules` compares with iptables too when it is installed.
# A benchmark that cannot run here gets a row saying why; the script goes on with the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${FIGURES_OUT:-FIGURES.md}

# Mutation testing takes hours, so it is not run here: its figures are those of the last
# scripts/mutants.sh run, kept in docs/mutants.md.
mutants_section() {
    echo "## Mutation testing (from docs/mutants.md)"
    echo
    sed -n '/^## Figures$/,/^## Survivors explained$/p' docs/mutants.md | sed '1d;$d'
}

if [ "${1:-}" = "--refresh-mutants" ]; then
    [ -f "$out" ] || { echo "no $out to refresh: run scripts/figures.sh first" >&2; exit 1; }
    new=$(mktemp)
    SECTION="$(mutants_section)" awk '
        /^## Mutation testing / { print ENVIRON["SECTION"]; print ""; skip = 1; next }
        skip && /^## / { skip = 0 }
        !skip { print }
    ' "$out" > "$new" && mv "$new" "$out"
    echo "refreshed the mutation testing figures in $out" >&2
    exit 0
fi

if [ -z "${JITGATE_BIN:-}" ]; then
    cargo build --release -p jitgate || exit 1
    JITGATE_BIN="${CARGO_TARGET_DIR:-target}/release/jitgate"
    JITGATE_BIN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD 2>/dev/null || JITGATE_BIN_COMMIT="$JITGATE_BIN_COMMIT with uncommitted changes"
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rows="$logs/rows.md"
: > "$rows"

# The share of the machine's CPU time (all cores) that other processes used over one second,
# sampled between two benchmarks, when none of ours runs. The load average would mostly show the
# tail of the benchmark before.
others_cpu() {
    local a b
    read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ < /proc/stat
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ < /proc/stat
    local busy=$(( (b1 + b2 + b3 + b6 + b7 + b8) - (a1 + a2 + a3 + a6 + a7 + a8) ))
    local idle=$(( (b4 + b5) - (a4 + a5) ))
    echo $(( busy * 100 / (busy + idle > 0 ? busy + idle : 1) ))
}

# A table cell: one line, pipes escaped.
cell() { tr -s ' \t' ' ' <<< "$1" | sed -e 's/^ //' -e 's/ $//' -e 's/|/\\|/g'; }

row() { # benchmark, figure, yardstick, command
    printf '| %s | %s | %s | `%s` |\n' "$1" "$(cell "$2")" "$(cell "$3")" "$4" >> "$rows"
}

# bench NAME FIGURES YARDSTICKS ARGS…: runs `jitgate ARGS…`, then one row per output line that
# matches the FIGURES pattern (and not the YARDSTICKS one), the YARDSTICKS lines joined beside it.
bench() {
    local name=$1 figures=$2 yardsticks=$3
    shift 3
    local cmd="jitgate $*"
    echo "== $cmd" >&2
    local started=$SECONDS
    local load others
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    others=$(others_cpu)
    "$JITGATE_BIN" "$@" > "$logs/$name.out" 2> "$logs/$name.err"
    local status=$?
    echo "   $((SECONDS - started)) s, exit $status" >&2
    printf '%s\n' "$cmd" > "$logs/$name.cmd"
    echo "$name" >> "$logs/order"
    printf 'other processes before: %s %% CPU; load average before: %s; took %s s; exit %s\n' "$others" "$load" "$((SECONDS - started))" "$status" > "$logs/$name.took"
    if [ "$status" -ne 0 ]; then
        local why
        why=$(grep -v '^\s*$' "$logs/$name.err" | tail -n 1)
        row "$name" "did not run here: ${why:-exit $status}" "" "$cmd"
        # A failing benchmark may still have printed figures (the soak prints them, then fails).
    fi
    local yard=""
    if [ -n "$yardsticks" ]; then
        yard=$(grep -E "$yardsticks" "$logs/$name.out" | sed -e 's/^ *//' | paste -sd ';' - | sed 's/;/; /g')
    fi
    grep -E "$figures" "$logs/$name.out" | { if [ -n "$yardsticks" ]; then grep -vE "$yardsticks"; else cat; fi; } |
        while IFS= read -r line; do
            row "$name" "$line" "${yard:-—}" "$cmd"
        done
}

bench initiate '^(throughput|latency ms|stages|initiates:)' '^(yardstick|ratios)' \
    bench initiate --concurrency 16 --seconds 10
bench open-latency '^(initiate →|port closed|agent memory)' '^(floor =|yardstick:)|against the floor' \
    bench open-latency --grants 200 --expiries 10
bench kernel '^(one netlink batch|filled to|one grant|TCP connect rate)' '^packet path' \
    bench kernel --elements 100000
bench rules ' grants, [^:]*: load ' '' \
    bench rules --grants 10,1000,100000
bench fwknop '^  (jitgate|fwknop)' '' \
    bench fwknop --rounds 20 --window 10
bench connector '^(enable:|grants through|grant latency|restart:)' '^(yardstick|ratios)' \
    bench connector --grants 200 --expired 1000 --calls 200
bench authz 'check|resolving' '' \
    bench authz --assignments 1000
bench audit '^(first page|verify)' '' \
    bench audit --records 1000000
bench portal 'KiB|^of which' '^yardstick' \
    bench portal --vms 10000
bench inventory 'KiB|^first page after a change' '^yardstick' \
    bench inventory --vms 10000
bench replicas '^(audit chain|1 replica|2 replicas|fan-out|replica [0-9]|agent)' '^yardstick' \
    bench replicas --agents 1000 --vms 10000
bench soak '^(server VmRSS|server heap|real agent heap|server RSS|server open fds|SQLite WAL|real agent RSS|expiry lateness|endTimeUtc →|revoke →|live grants|at the end|soak summary|soak: )' '^bounds' \
    bench soak --duration 2m --agents 100 --real-agents 3

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
{
    echo "# Figures"
    echo
    echo "Every benchmark of jitgate, run one after the other by \`scripts/figures.sh\` with the release"
    echo "binary; each yardstick or ratio was measured by the same benchmark in the same run, on the"
    echo "same machine. Regenerate with \`sudo scripts/figures.sh\` (it overwrites this file)."
    echo
    echo "- machine: ${cpu:-unknown CPU}, $(nproc) cores, ${mem}, Linux $(uname -r)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- binary: the release build of commit ${JITGATE_BIN_COMMIT:-unknown (JITGATE_BIN given without JITGATE_BIN_COMMIT)}; client, server, agents and kernel share the cores"
    echo "- load: the CPU other processes used in the second before each benchmark (when none of ours ran) is under its output below, with the load average (which mostly shows the tail of the benchmark before)"
    busiest=$(cut -d' ' -f4 "$logs"/*.took 2>/dev/null | sort -g | tail -n 1)
    if [ "${busiest:-0}" -gt 20 ]; then
        echo "- **a busy machine**: other processes used up to ${busiest} % of the CPU between benchmarks, so these figures are slower than the same build's on an idle machine; compare ratios to the yardsticks, not absolute figures"
    else
        echo "- an idle machine: other processes used at most ${busiest:-0} % of the CPU between benchmarks"
    fi
    echo
    echo "| benchmark | figure | yardstick / ratio (same run) | command |"
    echo "|---|---|---|---|"
    cat "$rows"
    echo
    mutants_section
    echo "## Each benchmark's output"
    while IFS= read -r name; do
        f="$logs/$name.out"
        echo
        echo "### \`$(cat "$logs/$name.cmd")\`"
        echo
        cat "$logs/$name.took"
        echo
        echo '```text'
        cat "$f"
        grep -v '^\s*$' "$logs/$name.err" | grep -vE '^soak: [0-9]+ s,' | tail -n 5
        echo '```'
    done < "$logs/order"
} > "$out"
echo "wrote $out" >&2
