#!/usr/bin/env bash
# Runs every `jitgate bench …` with the release binary and writes FIGURES.md: one table of every
# figure (benchmark · figure · yardstick or ratio measured in the same run · command), with the
# machine and the date, and each benchmark's whole output after it.
#
#   sudo scripts/figures.sh              # builds the release binary first
#   sudo JITGATE_BIN=/path/to/jitgate scripts/figures.sh
#
# The namespace benchmarks need root, `ip` and `nft`; `bench replicas` a PostgreSQL server
# (JITGATE_BENCH_PG, default postgres://postgres@127.0.0.1:5432); `bench fwknop` Debian's
# fwknop-server and fwknop-client; `bench rules` compares with iptables too when it is installed.
# A benchmark that cannot run here gets a row saying why; the script goes on with the others.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${JITGATE_BIN:-}" ]; then
    cargo build --release -p jitgate || exit 1
    JITGATE_BIN="${CARGO_TARGET_DIR:-target}/release/jitgate"
fi
out=${FIGURES_OUT:-FIGURES.md}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rows="$logs/rows.md"
: > "$rows"

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
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$JITGATE_BIN" "$@" > "$logs/$name.out" 2> "$logs/$name.err"
    local status=$?
    echo "   $((SECONDS - started)) s, exit $status" >&2
    printf '%s\n' "$cmd" > "$logs/$name.cmd"
    echo "$name" >> "$logs/order"
    printf 'load average before: %s; took %s s; exit %s\n' "$load" "$((SECONDS - started))" "$status" > "$logs/$name.took"
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
    echo "- binary: the release build of commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); client, server, agents and kernel share the cores"
    echo "- load: the machine's load average before each benchmark is under its output below (other work on a shared machine slows every figure, the yardsticks too)"
    busiest=$(cut -d' ' -f4 "$logs"/*.took 2>/dev/null | sed 's/;//' | sort -g | tail -n 1)
    if awk -v l="${busiest:-0}" -v c="$(nproc)" 'BEGIN { exit !(l > c) }'; then
        echo "- **a busy machine**: the load average reached ${busiest} on $(nproc) cores during this run, so these figures are slower than the same build's on an idle machine; compare ratios to the yardsticks, not absolute figures"
    fi
    echo
    echo "| benchmark | figure | yardstick / ratio (same run) | command |"
    echo "|---|---|---|---|"
    cat "$rows"
    echo
    # Mutation testing takes hours, so it is not run here: its figures are those of the last
    # scripts/mutants.sh run, kept in docs/mutants.md.
    echo "## Mutation testing (from docs/mutants.md)"
    echo
    sed -n '/^## Figures$/,/^## Survivors explained$/p' docs/mutants.md | sed '1d;$d'
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
