#!/usr/bin/env bash
# Static analysis of the Terraform in infra/ with checkov (from PyPI, pinned below).
#
#   ./scripts/checkov.sh                 # every check on infra/; exit 1 on any failed check
#   ./scripts/checkov.sh --check CKV_AZURE_41    # extra checkov arguments are passed through
#
# It installs checkov once into .venv-checkov/ (gitignored; again when the pinned version
# changes) and runs it fully offline: no Bridgecrew/Prisma API key, no download of external
# checks, guideline mappings or Terraform modules. Checks skipped on purpose carry an inline
# `#checkov:skip=CKV_...:<reason>` in the resource they concern, so every exception is reviewed
# with the code it excuses.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
VENV=.venv-checkov

installed=$("$VENV/bin/checkov" --version 2>/dev/null || true)
if [ "$installed" != "$CHECKOV_VERSION" ]; then
  echo "==> installing checkov $CHECKOV_VERSION into $VENV/ (found: ${installed:-none})"
  command -v python3 >/dev/null 2>&1 || {
    echo "checkov.sh: python3 (with venv and pip) is required" >&2
    exit 1
  }
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

# Offline: never talk to the Bridgecrew/Prisma platform, never fetch guideline mappings.
unset BC_API_KEY PRISMA_API_URL
export BC_SKIP_MAPPING=TRUE
export LOG_LEVEL=${LOG_LEVEL:-WARNING}

exec "$VENV/bin/checkov" \
  --directory infra \
  --framework terraform \
  --quiet --compact \
  --skip-download \
  --download-external-modules false \
  "$@"
