#!/usr/bin/env bash
# Installs tansu 0.6.0, the independently written Kafka-compatible broker the end-to-end suite
# (tests/tests/tansu.rs) runs journeyd against, under $HOME/.cache/journeyd/tansu (its build
# under $HOME/.cache/journeyd/tansu-target), once: later runs find it there and return at once.
# The suite finds the binary there too (or through TANSU_BIN).
set -euo pipefail
root="$HOME/.cache/journeyd/tansu"
bin="$root/bin/tansu"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q '0\.6\.0'; then
  exit 0
fi
echo "journeyd: installing tansu 0.6.0 into $root (first time only)"
CARGO_TARGET_DIR="$HOME/.cache/journeyd/tansu-target" \
  cargo install tansu --version 0.6.0 --features dynostore --locked --root "$root" --quiet
"$bin" --version
