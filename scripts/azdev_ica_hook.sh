#!/usr/bin/env bash
# azdev_ica_hook.sh: record an Azure Pipelines run on icahub's run ledger.
#
#   azdev_ica_hook.sh start  [--pipeline NAME] [--run-id ID] [--branch B] [--commit SHA] [--triggered-by WHO]
#   azdev_ica_hook.sh event  --type TYPE [--data JSON] [--run-id ID]
#   azdev_ica_hook.sh finish --status success|failed|cancelled [--end-time ISO8601] [--run-id ID]
#   azdev_ica_hook.sh replay           send what was spooled while the hub was unreachable
#   azdev_ica_hook.sh approval --target ENV [--cost USD] [--checklist JSON] [--project P] [--run-id ID]
#                                      ask for a deployment approval; prints its id
#   azdev_ica_hook.sh poll --approval-id APR-… [--interval SECS] [--max-wait SECS]
#                                      wait for the decision: exit 0 approved, 1 rejected or expired
#
# Defaults come from the Azure Pipelines predefined variables (BUILD_DEFINITIONNAME, BUILD_BUILDID,
# BUILD_SOURCEBRANCH, BUILD_SOURCEVERSION, BUILD_REQUESTEDFOREMAIL or BUILD_REQUESTEDFOR).
#
# Environment:
#   ICAHUB_URL        hub base URL, e.g. https://icahub.azurewebsites.net (required)
#   ICAHUB_API_KEY    API key of an identity with the devops role (required; never printed)
#   ICAHUB_SPOOL_DIR  where unsent records wait (default: $AGENT_TEMPDIRECTORY or /tmp, + /icahub-spool)
#   ICAHUB_RETRIES    attempts per request (default 5; exponential backoff from 1 s)
#   ICAHUB_TIMEOUT    seconds per attempt (default 10)
#
# When the hub cannot be reached (network error, 408, 429 or 5xx after every retry) the record is
# spooled and the step succeeds with a warning: the pipeline is not blocked by the ledger. Spooled
# records are sent first, in order, by the next call (or by `replay`). A 4xx answer means the
# record itself is wrong: the step fails and nothing is spooled.
#
# Approvals are a gate, so they are never spooled: `approval` fails the step when the hub cannot
# be reached, and `poll` keeps trying (with the same backoff) until --max-wait. In a pipeline,
# `approval` also sets the variable ICAHUB_APPROVAL_ID for later steps.
set -euo pipefail

die() { echo "azdev_ica_hook: $*" >&2; exit 2; }
warn() {
  if [ -n "${TF_BUILD:-}" ]; then echo "##vso[task.logissue type=warning]azdev_ica_hook: $*"; else echo "azdev_ica_hook: warning: $*" >&2; fi
}

[ $# -ge 1 ] || die "usage: $0 start|event|finish|replay|approval|poll [options] (see the header of this script)"
cmd=$1; shift

: "${ICAHUB_URL:?set ICAHUB_URL to the hub base URL}"
: "${ICAHUB_API_KEY:?set ICAHUB_API_KEY (an API key with the devops role)}"
retries=${ICAHUB_RETRIES:-5}
timeout=${ICAHUB_TIMEOUT:-10}
spool=${ICAHUB_SPOOL_DIR:-${AGENT_TEMPDIRECTORY:-/tmp}/icahub-spool}
base=${ICAHUB_URL%/}

# JSON string escaping for values that come from the pipeline.
json_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# POST a JSON body. Prints the answer. Returns 0 on 2xx, 3 when the hub is unreachable or
# failing (worth spooling), 4 on a client error.
post() {
  local path=$1 body=$2 attempt=1 delay=1 code out
  out=$(mktemp)
  while :; do
    code=$(curl -sS -o "$out" -w '%{http_code}' --max-time "$timeout" \
      -H "authorization: Bearer ${ICAHUB_API_KEY}" -H 'content-type: application/json' \
      -X POST --data-binary "$body" "$base$path" 2>/dev/null) || code=000
    case $code in
      2??) cat "$out"; rm -f "$out"; return 0 ;;
      000|408|429|5??) ;;
      *) cat "$out" >&2; echo >&2; rm -f "$out"; return 4 ;;
    esac
    if [ "$attempt" -ge "$retries" ]; then rm -f "$out"; return 3; fi
    sleep "$delay"; attempt=$((attempt + 1)); delay=$((delay * 2))
  done
}

# GET a path. Prints the answer. Same return codes as post.
get() {
  local path=$1 attempt=1 delay=1 code out
  out=$(mktemp)
  while :; do
    code=$(curl -sS -o "$out" -w '%{http_code}' --max-time "$timeout" \
      -H "authorization: Bearer ${ICAHUB_API_KEY}" "$base$path" 2>/dev/null) || code=000
    case $code in
      2??) cat "$out"; rm -f "$out"; return 0 ;;
      000|408|429|5??) ;;
      *) cat "$out" >&2; echo >&2; rm -f "$out"; return 4 ;;
    esac
    if [ "$attempt" -ge "$retries" ]; then rm -f "$out"; return 3; fi
    sleep "$delay"; attempt=$((attempt + 1)); delay=$((delay * 2))
  done
}

# The first string value of a top-level key in the hub's compact JSON answer.
json_field() {
  printf '%s' "$2" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n 1
}

spool_it() {
  mkdir -p "$spool"
  local f
  f="$spool/$(date -u +%Y%m%dT%H%M%S%N)-$$-$1.json"
  printf '%s\n%s\n' "$2" "$3" > "$f"
  warn "icahub unreachable: $2 spooled to $f; it is sent by the next call or by '$0 replay'"
}

# Send spooled records oldest first; stop at the first that still cannot be sent.
replay() {
  [ -d "$spool" ] || return 0
  local f path body rc
  local files
  files=$(find "$spool" -maxdepth 1 -name '*.json' | sort)
  for f in $files; do
    path=$(sed -n 1p "$f"); body=$(sed -n 2p "$f")
    rc=0; post "$path" "$body" >/dev/null || rc=$?
    case $rc in
      0) rm -f "$f" ;;
      4) warn "spooled record $f was refused by the hub; moved aside"; mv "$f" "$f.refused" ;;
      *) return 3 ;;
    esac
  done
}

send() {
  local name=$1 path=$2 body=$3 rc=0
  if ! replay; then spool_it "$name" "$path" "$body"; return 0; fi
  post "$path" "$body" || rc=$?
  case $rc in
    0) echo ;;
    3) spool_it "$name" "$path" "$body" ;;
    *) die "the hub refused the $name record" ;;
  esac
}

pipeline=${BUILD_DEFINITIONNAME:-}; run_id=${BUILD_BUILDID:-}; branch=${BUILD_SOURCEBRANCH:-}
commit=${BUILD_SOURCEVERSION:-}; who=${BUILD_REQUESTEDFOREMAIL:-${BUILD_REQUESTEDFOR:-}}
type=""; data="{}"; status=""; end_time=""
target=""; cost=""; checklist="[]"; project=""; approval_id=${ICAHUB_APPROVAL_ID:-}; interval=30; max_wait=18000
while [ $# -gt 0 ]; do
  case $1 in
    --pipeline) pipeline=$2; shift 2 ;;
    --run-id) run_id=$2; shift 2 ;;
    --branch) branch=$2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --triggered-by) who=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --data) data=$(printf '%s' "$2" | tr '\n\r' '  '); shift 2 ;;
    --status) status=$2; shift 2 ;;
    --end-time) end_time=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --cost) cost=$2; shift 2 ;;
    --checklist) checklist=$(printf '%s' "$2" | tr '\n\r' '  '); shift 2 ;;
    --project) project=$2; shift 2 ;;
    --approval-id) approval_id=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --max-wait) max_wait=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done

case $cmd in
  start)
    for v in pipeline run_id branch commit who; do [ -n "${!v}" ] || die "start needs a value for $v (an option or its pipeline variable)"; done
    send start /api/v1/azdev/run/start "{\"pipeline_name\":$(json_str "$pipeline"),\"run_id\":$(json_str "$run_id"),\"branch\":$(json_str "$branch"),\"commit\":$(json_str "$commit"),\"triggered_by\":$(json_str "$who")}" ;;
  event)
    [ -n "$run_id" ] || die "event needs --run-id (or BUILD_BUILDID)"
    [ -n "$type" ] || die "event needs --type"
    send event /api/v1/azdev/run/event "{\"run_id\":$(json_str "$run_id"),\"event_type\":$(json_str "$type"),\"event_data\":$data}" ;;
  finish)
    [ -n "$run_id" ] || die "finish needs --run-id (or BUILD_BUILDID)"
    case $status in success|failed|cancelled) ;; *) die "finish needs --status success|failed|cancelled" ;; esac
    [ -n "$end_time" ] || end_time=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    send finish /api/v1/azdev/run/finish "{\"run_id\":$(json_str "$run_id"),\"status\":$(json_str "$status"),\"end_time\":$(json_str "$end_time")}" ;;
  replay)
    replay || { warn "the hub is still unreachable; records stay spooled in $spool"; exit 0; } ;;
  approval)
    [ -n "$run_id" ] || die "approval needs --run-id (or BUILD_BUILDID)"
    [ -n "$target" ] || die "approval needs --target (the deployment environment)"
    replay || warn "spooled ledger records could not be sent yet"
    body="{\"run_id\":$(json_str "$run_id"),\"deployment_target\":$(json_str "$target"),\"checklist\":$checklist"
    [ -z "$cost" ] || body="$body,\"estimated_cost\":$(json_str "$cost")"
    [ -z "$project" ] || body="$body,\"project\":$(json_str "$project")"
    body="$body}"
    rc=0; answer=$(post /api/v1/azdev/approval "$body") || rc=$?
    case $rc in
      0) ;;
      3) echo "azdev_ica_hook: the hub cannot be reached; an approval cannot be asked for (nothing spooled: approvals are a gate)" >&2; exit 1 ;;
      *) die "the hub refused the approval request" ;;
    esac
    id=$(json_field approval_id "$answer"); st=$(json_field status "$answer")
    [ -n "$id" ] || die "unexpected answer from the hub: $answer"
    [ -z "${TF_BUILD:-}" ] || echo "##vso[task.setvariable variable=ICAHUB_APPROVAL_ID]$id"
    echo "$answer"
    echo "azdev_ica_hook: $id is $st" >&2
    if [ "$st" = rejected ]; then echo "azdev_ica_hook: $id was rejected: $(json_field reason "$answer")" >&2; exit 1; fi ;;
  poll)
    [ -n "$approval_id" ] || die "poll needs --approval-id (or ICAHUB_APPROVAL_ID)"
    case $interval$max_wait in *[!0-9]*) die "--interval and --max-wait are whole seconds" ;; esac
    waited=0
    while :; do
      rc=0; answer=$(get "/api/v1/azdev/approval/$approval_id") || rc=$?
      case $rc in
        0) st=$(json_field status "$answer") ;;
        3) st=unreachable; warn "the hub cannot be reached; still waiting for $approval_id" ;;
        *) die "the hub refused to show $approval_id" ;;
      esac
      case $st in
        approved) echo "azdev_ica_hook: $approval_id approved" >&2; exit 0 ;;
        rejected|expired) echo "azdev_ica_hook: $approval_id $st: $(json_field reason "$answer")" >&2; exit 1 ;;
      esac
      if [ "$waited" -ge "$max_wait" ]; then echo "azdev_ica_hook: gave up waiting for $approval_id after ${waited}s (last status: $st)" >&2; exit 1; fi
      echo "azdev_ica_hook: $approval_id is $st; checking again in ${interval}s" >&2
      sleep "$interval"; waited=$((waited + interval))
    done ;;
  *) die "unknown command $cmd (start, event, finish, replay, approval, poll)" ;;
esac
