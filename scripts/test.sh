#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs Azurite (the official Azure Storage
# emulator, pinned in package-lock.json), checks formatting and lints, runs every test, then
# checkov over the Terraform in infra/ (scripts/checkov.sh, from PyPI) and the API conformance
# run (scripts/schemathesis.sh: Schemathesis from PyPI against a running hub).
# The Table Storage tests start their own Azurite from node_modules/ and FAIL if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
  echo "test.sh: npm is required to install Azurite (Node.js 18 or newer)" >&2
  exit 1
fi
if [ ! -x node_modules/.bin/azurite-table ]; then
  echo "==> installing Azurite from npm (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --all-targets "$@"
echo "==> checkov (infra/)"
./scripts/checkov.sh
echo "==> API conformance (schemathesis)"
./scripts/schemathesis.sh
