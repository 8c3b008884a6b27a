#!/usr/bin/env bash
# Builds every plugin and fixture of this workspace, and examples/hello-plugin, as release
# WebAssembly components (wasm32-wasip2), copies them to plugins/dist/<name>.wasm, checks that
# each is a component (not a core module) and prints the sizes.
#
#   plugins/build.sh                    # everything
#   plugins/build.sh echo panic         # only these packages (examples/hello-plugin: hello-plugin)
#
# Build output goes to $CARGO_TARGET_DIR (default ~/.cache/shoal-guest-target), so reruns are
# incremental. dist/ is not committed.
set -euo pipefail
cd "$(dirname "$0")"
PLUGINS_DIR="$PWD"
ROOT="$(cd .. && pwd)"

TOOLCHAIN="${SHOAL_TOOLCHAIN:-1.97.0}"
TARGET=wasm32-wasip2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal-guest-target}"
DIST="$PLUGINS_DIR/dist"

# Workspace packages: name and directory, from cargo itself.
mapfile -t PACKAGES < <(cargo +"$TOOLCHAIN" metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys; [print(p["name"]) for p in json.load(sys.stdin)["packages"] if p["name"] != "shoal-sdk"]')

want=("$@")
selected() { [ "${#want[@]}" -eq 0 ] || printf '%s\n' "${want[@]}" | grep -qx "$1"; }

args=()
for p in "${PACKAGES[@]}"; do
  if selected "$p"; then args+=(-p "$p"); fi
done
if [ "${#args[@]}" -gt 0 ]; then
  cargo +"$TOOLCHAIN" build --release --locked --target "$TARGET" "${args[@]}"
fi
if selected hello-plugin; then
  (cd "$ROOT/examples/hello-plugin" && cargo +"$TOOLCHAIN" build --release --locked --target "$TARGET")
  PACKAGES+=(hello-plugin)
fi

mkdir -p "$DIST"
status=0
for p in "${PACKAGES[@]}"; do
  selected "$p" || continue
  src="$CARGO_TARGET_DIR/$TARGET/release/${p//-/_}.wasm"
  cp "$src" "$DIST/$p.wasm"
  # A component starts with "\0asm" and version 0x0d 0x00 0x01 0x00 (a core module: 01 00 00 00).
  header="$(head -c 8 "$DIST/$p.wasm" | od -An -tx1 | tr -d ' \n')"
  kind=component
  if [ "$header" != "0061736d0d000100" ]; then kind="NOT A COMPONENT ($header)"; status=1; fi
  awk -v n="$p" -v b="$(wc -c <"$DIST/$p.wasm")" -v k="$kind" \
    'BEGIN { printf "%-16s %8d bytes %7.1f KiB  %s\n", n, b, b / 1024, k }'
done
echo "components in $DIST"
exit "$status"
