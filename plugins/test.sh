#!/usr/bin/env bash
# Runs the native unit tests of every plugin and fixture (through shoal-sdk's test harness, with
# a fake host) and of examples/hello-plugin. This workspace builds for wasm32-wasip2 by default,
# so the tests name the host's target explicitly. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
TOOLCHAIN="${SHOAL_TOOLCHAIN:-1.97.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal-guest-target}"
HOST="$(rustc +"$TOOLCHAIN" -vV | sed -n 's/^host: //p')"

cargo +"$TOOLCHAIN" test --locked --workspace --target "$HOST" "$@"
(cd ../examples/hello-plugin && cargo +"$TOOLCHAIN" test --locked --target "$HOST" "$@")
