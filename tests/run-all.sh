#!/usr/bin/env bash
# Installs everything the tests need (idempotent: rustup, apt, pip) and runs every test:
# formatting, clippy, Rust unit and end-to-end tests, the plugins (built as WebAssembly
# components, which the plugin host's tests load), and the Python paho-mqtt suite.
# `.ci/run` calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=1.97.0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "Rust $TOOLCHAIN (with rustfmt, clippy, wasm32-wasip2)"
rustup toolchain install "$TOOLCHAIN" --profile minimal -c rustfmt -c clippy -t wasm32-wasip2

step "System packages (redis-server, mosquitto-clients, openssl, chromium)"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v openssl >/dev/null || missing+=(openssl)
# The dashboard's browser test drives Debian's Chromium (Playwright downloads no browser here).
command -v chromium >/dev/null || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts a redis service on install where systemd runs; our tests start their own.

step "Python packages (paho-mqtt, pytest, boto3, awsiotsdk, aiosmtpd, schemathesis, playwright)"
python3 -m pip install -q --disable-pip-version-check paho-mqtt==2.2.0 duckdb==2.0.1 pyarrow==26.0.1 pandas==3.1.1 pytest==9.2.0 pytest-timeout==2.4.0 boto3==1.43.11 awsiotsdk==1.31.0 aiosmtpd==1.4.6 schemathesis==4.32.5 playwright==1.65.2 \
  2>&1 | grep -v "Running pip as the 'root' user" || true

step "Disk space for $CARGO_TARGET_DIR"
# The target dir is shared by every checkout and CI run on this machine, and each checkout path
# gets its own artifact hashes, so it grows without bound. A full disk makes the linker die with
# SIGBUS, so prune before building: first the incremental caches, then everything.
mkdir -p "$CARGO_TARGET_DIR"
free_gib() { df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print int($4 / 1048576)}'; }
echo "free: $(free_gib) GiB"
if [ "$(free_gib)" -lt 30 ]; then
  rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/release/incremental"
  echo "pruned incremental caches; free: $(free_gib) GiB"
fi
if [ "$(free_gib)" -lt 20 ]; then
  rm -rf "$CARGO_TARGET_DIR/debug"
  echo "removed the debug build; free: $(free_gib) GiB"
fi

step "Format and lint"
cargo +"$TOOLCHAIN" fmt --all --check
cargo +"$TOOLCHAIN" clippy --workspace --all-targets --locked -- -D warnings

step "Build"
cargo +"$TOOLCHAIN" build --workspace --bins --locked

step "Plugins: WebAssembly components (wasm32-wasip2) and their native tests"
(cd plugins && cargo +"$TOOLCHAIN" fmt --all --check)
CARGO_TARGET_DIR="$HOME/.cache/shoal-guest-target" plugins/build.sh
CARGO_TARGET_DIR="$HOME/.cache/shoal-guest-target" plugins/test.sh

step "Rust tests (unit, store conformance, end-to-end)"
cargo +"$TOOLCHAIN" test --workspace --locked

step "Python paho-mqtt suite"
SHOAL_BIN="$CARGO_TARGET_DIR/debug/shoal" python3 -m pytest tests/python -q

step "All tests passed"
