#!/usr/bin/env bash
# Build the deployment package for Azure Functions (Linux x86_64): a release build, then
# `icahub package`, which writes a zip holding host.json, every functions/<name>/ folder at the
# zip root beside it, and the `icahub` binary (executable). Deploy it as docs/deploy.md says.
#   scripts/package.sh                 # → dist/icahub.zip
#   scripts/package.sh out/hub.zip     # → out/hub.zip
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/icahub.zip}"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "package.sh: build on Linux x86_64 (the Functions host runs a Linux x86_64 binary)" >&2; exit 1 ;;
esac
echo "==> cargo build --release --locked"
cargo build --release --locked
echo "==> icahub package --out $out"
target/release/icahub package --out "$out" --binary target/release/icahub --root .
