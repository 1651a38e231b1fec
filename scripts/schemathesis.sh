#!/usr/bin/env bash
# API conformance: Schemathesis (from PyPI, pinned below) generates requests from
# api/icahub-openapi.yaml, valid and invalid, sends them to a real hub and checks every answer:
# no 5xx; status code, content type, body and headers as the document describes them; a request
# without a required header refused; and no operation that declares security answering without it.
# Not checked: negative_data_rejection and positive_data_acceptance (the hub is deliberately
# lenient in places the schema cannot say, e.g. an empty query value is no filter, and Mattermost
# callbacks are always 200), and unsupported_method (the hub's 405s carry no `Allow` header yet,
# and any method on `/` answers 200: it is the host's readiness probe).
#
#   ./scripts/schemathesis.sh                  # the run the test command does (about a minute)
#   SCHEMATHESIS_MAX_EXAMPLES=1000 SCHEMATHESIS_SEED=7 ./scripts/schemathesis.sh   # longer, other cases
#   ./scripts/schemathesis.sh --include-path /api/v1/azdev/incidents   # extra schemathesis args
#
# The seed is fixed so that a failure in CI reproduces; change it to explore other cases.
#
# It installs Schemathesis once into .venv-schemathesis/ (gitignored), builds target/debug/icahub,
# starts `icahub serve` on a free port over an embedded store in a temporary directory with
# ICAHUB_AUTH=required, issues an API key for an identity holding every role, and runs
# Schemathesis with that key as the bearer token. Exit status: Schemathesis's (non-zero on any
# failure), or 1 if the hub could not be started.
#
# Every documented operation is exercised, including the ones that are not for people:
#   POST /dispatch                 the timer function; answers the host's envelope (no sinks are
#                                  configured, so a drain delivers nothing)
#   POST /api/v1/mattermost/actions  no API key (a signed token in the body): generated bodies carry
#                                  no valid token, so only the refusals are exercised (always 200)
#   POST /api/v1/azdo/hooks        the API key of a devops identity is one of its credentials
#   POST /api/v1/azdo/check        its headers are generated from the document; a generated PlanUrl
#                                  is not an Azure DevOps host, so the run mostly sees 400s
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=.venv-schemathesis
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-250}
SEED=${SCHEMATHESIS_SEED:-20261122}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION into $VENV/"
  command -v python3 >/dev/null 2>&1 || {
    echo "schemathesis.sh: python3 (with venv and pip) is required" >&2
    exit 1
  }
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet --bin icahub
BIN=target/debug/icahub

WORK=$(mktemp -d)
HUB_PID=
cleanup() {
  if [ -n "$HUB_PID" ] && kill -0 "$HUB_PID" 2>/dev/null; then
    kill "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The hub's environment: a fresh embedded store, keys required, and nothing inherited (no sinks,
# no hook credentials, no Table Storage, not the Functions host) but the log level.
log_level=${ICAHUB_LOG:-warn}
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^ICAHUB_' || true)
unset FUNCTIONS_CUSTOMHANDLER_PORT AzureWebJobsStorage
export ICAHUB_STORAGE=embedded ICAHUB_DATA_DIR="$WORK/data" ICAHUB_AUTH=required
export ICAHUB_LOG=$log_level

# The key and its roles go into the store before the hub opens it.
KEY=$("$BIN" keys issue --identity schemathesis --by schemathesis 2>"$WORK/cli.log") || {
  cat "$WORK/cli.log" >&2
  exit 1
}
for role in devops technical_approver business_approver finance auditor admin alert_sender; do
  "$BIN" roles grant schemathesis "$role" --by schemathesis >/dev/null
done

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --port "$PORT" 2>"$WORK/hub.log" &
HUB_PID=$!
up=
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/api/healthz', timeout=1)" 2>/dev/null; then
    up=1
    break
  fi
  kill -0 "$HUB_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "schemathesis.sh: icahub serve did not answer on port $PORT:" >&2
  cat "$WORK/hub.log" >&2
  exit 1
fi

echo "==> schemathesis $SCHEMATHESIS_VERSION against http://127.0.0.1:$PORT ($MAX_EXAMPLES examples per operation)"
set +e
"$VENV/bin/schemathesis" run api/icahub-openapi.yaml \
  --url "http://127.0.0.1:$PORT" \
  -H "Authorization: Bearer $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,missing_required_header,ignored_auth \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --request-timeout 10 \
  --generation-database none \
  --no-color \
  "$@"
status=$?
set -e
if [ "$status" -ne 0 ] && [ -s "$WORK/hub.log" ]; then
  echo "==> the hub's log (warnings and errors)" >&2
  tail -n 50 "$WORK/hub.log" >&2
fi
exit "$status"
