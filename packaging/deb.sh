#!/usr/bin/env bash
# Builds the Debian package (target/debian/jitgate_<version>-1_<arch>.deb unless --output says
# otherwise):
#   packaging/deb.sh                  cargo build --release, then the package
#   packaging/deb.sh --no-build       package the binary already at $CARGO_TARGET_DIR/release/jitgate
# Other arguments go to `cargo deb` (--output DIR, --fast …).
#
# The man pages and shell completions come from the binary's own command tree (`jitgate man`,
# `jitgate completions`): they are written into $CARGO_TARGET_DIR/release/packaging/, where the
# [package.metadata.deb] assets of crates/jitgate/Cargo.toml take them from, before `cargo deb
# --no-build` packs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

build=yes
args=()
for a in "$@"; do
    if [ "$a" = --no-build ]; then build=no; else args+=("$a"); fi
done
if [ "$build" = yes ]; then
    cargo build --release --locked -p jitgate
fi

bin="$target/release/jitgate"
stage="$target/release/packaging"
[ -x "$bin" ] || { echo "packaging/deb.sh: no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }
rm -rf "$stage"
mkdir -p "$stage/man" "$stage/completions"
"$bin" man --dir "$stage/man" >/dev/null
"$bin" completions bash >"$stage/completions/jitgate"
"$bin" completions zsh >"$stage/completions/_jitgate"
"$bin" completions fish >"$stage/completions/jitgate.fish"
gzip -9n "$stage"/man/*.1

exec cargo deb -p jitgate --no-build "${args[@]}"
