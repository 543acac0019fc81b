#!/usr/bin/env bash
# run.sh: build both services (debug profile), start Service A, then Service B calling it,
# show a few requests to try and follow both logs. Ctrl-C (or SIGTERM) stops both and exits.
#
# Environment:
#   SERVICE_A_LISTEN  Service A's address (default 127.0.0.1:8080; port 0 = any free port)
#   SERVICE_B_LISTEN  Service B's address (default 127.0.0.1:8081; port 0 = any free port)
#   SERVICE_A_URL     where B finds A (default: the address A bound)
#   ECHO_BIN_DIR      directory with prebuilt service_a and service_b: nothing is built
#   KEEP_LOG_DIR=1    keep the log files (in a fresh directory under /tmp) after the stop
#   The services read every other SERVICE_* variable themselves (SERVICE_A_DELAY_MS,
#   SERVICE_B_TIMEOUT_MS, ...). A log level quieter than info is raised to info: run.sh
#   shows the logs and waits for each service's "listening on" line.
#
# If one service exits on its own (stop A to watch B answer 503), the other keeps running;
# run.sh ends when both are gone.

set -uo pipefail
# shellcheck source=SCRIPTDIR/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"

case ${1:-} in
    -h | --help) print_help "${BASH_SOURCE[0]}" && exit 0 ;;
    '') ;;
    *) echo "run.sh: unknown argument '$1' (try --help)" >&2 && exit 2 ;;
esac

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/echo-run.XXXXXX") || exit 1
TAIL_PID=''
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
    local rc=$?
    trap '' INT TERM
    ((${#LIB_PIDS[@]} == 0)) || echo "run.sh: stopping the services..."
    stop_all
    [[ -z $TAIL_PID ]] || { sleep 0.3 && kill "$TAIL_PID" && wait "$TAIL_PID"; } # last lines out
    [[ -n ${KEEP_LOG_DIR:-} ]] || rm -rf "$LOGS"
    exit "$rc"
}
trap finish EXIT
trap 'echo; exit 0' INT TERM
die() { echo "run.sh: $*" >&2 && exit 1; }
level() { case ${1,,} in debug | trace) echo "$1" ;; *) echo info ;; esac }

echo "run.sh: building service_a and service_b..."
# shellcheck disable=SC2119  # no extra cargo flags here
build_services || die "$LIB_ERROR"
start_service "$LOGS/service_a.log" "$A_BIN" --log-level "$(level "${SERVICE_A_LOG_LEVEL:-}")" ||
    die "service_a $LIB_ERROR"
A_PID=$SERVICE_PID A_URL=$SERVICE_URL
b_args=(--log-level "$(level "${SERVICE_B_LOG_LEVEL:-}")")
[[ -n ${SERVICE_A_URL:-} ]] || b_args+=(--service-a-url "$A_URL")
start_service "$LOGS/service_b.log" "$B_BIN" "${b_args[@]}" || die "service_b $LIB_ERROR"
B_PID=$SERVICE_PID B_URL=$SERVICE_URL

try() { printf '  %-52s # %s\n' "$1" "$2"; }
printf '\nBoth services are up.\n  service_a  %s  (pid %s)\n  service_b  %s  (pid %s) -> calls %s\n' \
    "$A_URL" "$A_PID" "$B_URL" "$B_PID" "${SERVICE_A_URL:-$A_URL}"
printf '\nTry, from another terminal:\n'
try "curl '$B_URL/call-echo?msg=hello'" "200: B relays A's echo"
try "curl -i '$B_URL/call-echo'" "400: missing msg"
try "curl '$A_URL/echo?msg=direct'" "A on its own"
try "kill -INT $A_PID" "stops A only; B keeps running and then..."
try "curl -i '$B_URL/call-echo?msg=hello'" "...answers 503, kind \"connect\""
try "SERVICE_A_DELAY_MS=3000 ./run.sh" "a slow A: 503, kind \"timeout\""
printf '\nLogs follow (files in %s). Ctrl-C stops both.\n\n' "$LOGS"
tail -q -n +1 -f "$LOGS/service_a.log" "$LOGS/service_b.log" &
TAIL_PID=$!

# Report a service that exits on its own; end when both are gone.
declare -A RUNNING=([service_a]=$A_PID [service_b]=$B_PID)
while ((${#RUNNING[@]} > 0)); do
    for name in "${!RUNNING[@]}"; do
        alive "${RUNNING[$name]}" && continue
        stop_service "${RUNNING[$name]}" # reaps it
        unset "RUNNING[$name]"
        echo "run.sh: $name exited with status $STOP_RC${RUNNING[*]:+; the other keeps running}"
    done
    sleep 0.5
done
die "both services have exited"
