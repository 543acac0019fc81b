#!/usr/bin/env bash
# run.sh: build both services (debug profile), start Service A, then Service B calling it,
# show a few requests to try and follow both logs. Ctrl-C (or SIGTERM) stops both and exits.
#
# Usage: ./run.sh [--replicas N]
#   --replicas N   start N replicas of A (1 to 20) on 127.0.0.2, 127.0.0.3, ... (A's port, 8080
#                  unless SERVICE_A_LISTEN says another), each with its admin listener on
#                  127.0.0.1 (a free port), and one B over all of them; print the address of
#                  B's live page and the curl lines that slow or fail one replica.
#
# Environment:
#   SERVICE_A_LISTEN  Service A's address (default 127.0.0.1:8080; port 0 = any free port);
#                     with --replicas only its port is used
#   SERVICE_B_LISTEN  Service B's address (default 127.0.0.1:8081; port 0 = any free port)
#   SERVICE_A_URL     where B finds A (default: the address A bound; ignored with --replicas)
#   ECHO_BIN_DIR      directory with prebuilt service_a and service_b: nothing is built
#   KEEP_LOG_DIR=1    keep the log files (in a fresh directory under /tmp) after the stop
#   The services read every other SERVICE_* variable themselves (SERVICE_A_DELAY_MS,
#   SERVICE_B_TIMEOUT_MS, ...). A log level quieter than info is raised to info: run.sh
#   shows the logs and waits for each service's "listening on" line.
#
# If one service exits on its own (stop A to watch B answer 503), the others keep running;
# run.sh ends when all are gone.

set -uo pipefail
# shellcheck source=SCRIPTDIR/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"

REPLICAS=0
while (($# > 0)); do
    case $1 in
        -h | --help) print_help "${BASH_SOURCE[0]}" && exit 0 ;;
        --replicas)
            if [[ ! ${2:-} =~ ^[0-9]{1,2}$ ]] || ((10#$2 < 1 || 10#$2 > 20)); then
                echo "run.sh: --replicas takes a number from 1 to 20 (try --help)" >&2 && exit 2
            fi
            REPLICAS=$((10#$2)) && shift 2
            ;;
        *) echo "run.sh: unknown argument '$1' (try --help)" >&2 && exit 2 ;;
    esac
done

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
# wait_line LOG PATTERN: print the first match of PATTERN in LOG, waiting up to 5 s for it.
wait_line() {
    local i
    for ((i = 0; i < 100; i++)); do
        grep -o -m1 "$2" "$1" && return 0
        sleep 0.05
    done
    return 1
}

echo "run.sh: building service_a and service_b..."
# shellcheck disable=SC2119  # no extra cargo flags here
build_services || die "$LIB_ERROR"
a_level=$(level "${SERVICE_A_LOG_LEVEL:-}")
b_args=(--log-level "$(level "${SERVICE_B_LOG_LEVEL:-}")")
declare -A RUNNING=()
if ((REPLICAS == 0)); then
    start_service "$LOGS/service_a.log" "$A_BIN" --log-level "$a_level" || die "service_a $LIB_ERROR"
    A_PID=$SERVICE_PID A_URL=$SERVICE_URL
    RUNNING[service_a]=$A_PID
    [[ -n ${SERVICE_A_URL:-} ]] || b_args+=(--service-a-url "$A_URL")
else
    # One A per loopback address, each with its admin listener on 127.0.0.1 (a free port).
    a_port=${SERVICE_A_LISTEN:-127.0.0.1:8080}
    a_port=${a_port##*:}
    A_URLS=() A_ADMINS=() A_PIDS=()
    for ((i = 1; i <= REPLICAS; i++)); do
        log="$LOGS/service_a_$i.log"
        start_service "$log" "$A_BIN" --listen "127.0.0.$((i + 1)):$a_port" \
            --admin-listen 127.0.0.1:0 --log-level "$a_level" || die "service_a $i $LIB_ERROR"
        admin=$(wait_line "$log" 'admin: GET and PUT http://[^ ]*/faults') ||
            die "service_a $i printed no admin line (log: $log)"
        A_URLS+=("$SERVICE_URL") A_ADMINS+=("${admin#admin: GET and PUT }") A_PIDS+=("$SERVICE_PID")
        RUNNING[service_a_$i]=$SERVICE_PID
        b_args+=(--service-a-url "$SERVICE_URL")
    done
    unset SERVICE_A_URL # B's --service-a-url flags name every replica
fi
start_service "$LOGS/service_b.log" "$B_BIN" "${b_args[@]}" || die "service_b $LIB_ERROR"
B_PID=$SERVICE_PID B_URL=$SERVICE_URL
RUNNING[service_b]=$B_PID

try() { printf '  %-52s # %s\n' "$1" "$2"; }
if ((REPLICAS == 0)); then
    printf '\nBoth services are up.\n  service_a  %s  (pid %s)\n  service_b  %s  (pid %s) -> calls %s\n' \
        "$A_URL" "$A_PID" "$B_URL" "$B_PID" "${SERVICE_A_URL:-$A_URL}"
    printf '\nTry, from another terminal:\n'
    try "curl '$B_URL/call-echo?msg=hello'" "200: B relays A's echo"
    try "curl -i '$B_URL/call-echo'" "400: missing msg"
    try "curl '$A_URL/echo?msg=direct'" "A on its own"
    try "kill -INT $A_PID" "stops A only; B keeps running and then..."
    try "curl -i '$B_URL/call-echo?msg=hello'" "...answers 503, kind \"connect\""
    try "SERVICE_A_DELAY_MS=3000 ./run.sh" "a slow A: 503, kind \"timeout\""
    try "./run.sh --replicas 3" "three A's and B's live page"
else
    printf '\n%s replicas of A and one B are up.\n' "$REPLICAS"
    for ((i = 0; i < REPLICAS; i++)); do
        printf '  service_a %-2s %s  (pid %s, admin %s)\n' "$((i + 1))" "${A_URLS[i]}" "${A_PIDS[i]}" "${A_ADMINS[i]}"
    done
    printf '  service_b    %s  (pid %s)\n' "$B_URL" "$B_PID"
    printf '\n%sThe live page: %s/%s  (its load control sends the calls)\n' "$BOLD" "$B_URL" "$RESET"
    put="curl -X PUT -H 'Content-Type: application/json'"
    last=$((REPLICAS - 1))
    printf '\nThen, from another terminal:\n'
    printf '  # slow replica 1 (300 ms on every /echo): its latency rises, its share falls\n'
    printf "  %s -d '{\"delay_ms\": 300}' %s\n" "$put" "${A_ADMINS[0]}"
    printf '  # fail every /echo of replica %s with 503: ejected, probed back, ejected for longer\n' "$((last + 1))"
    printf "  %s -d '{\"fail_rate\": 1, \"fail_status\": 503}' %s\n" "$put" "${A_ADMINS[last]}"
    printf '  # back to normal (each replica has its own admin address)\n'
    for i in 0 "$last"; do
        printf "  %s -d '{\"delay_ms\": 0, \"fail_rate\": 0}' %s\n" "$put" "${A_ADMINS[i]}"
    done
    printf '  # stop replica %s (ejected, then probed), and start it again (probed back)\n' "$((last + 1))"
    printf '  kill -INT %s\n  %s --listen %s &\n' "${A_PIDS[last]}" "$A_BIN" "${A_URLS[last]#http://}"
    printf "  curl -s '%s/replicas'   # B's view as JSON\n" "$B_URL"
fi
LOG_FILES=("$LOGS"/service_*.log)
printf '\nLogs follow (files in %s). Ctrl-C stops all.\n\n' "$LOGS"
tail -q -n +1 -f "${LOG_FILES[@]}" &
TAIL_PID=$!

# Report a service that exits on its own; end when all are gone.
while ((${#RUNNING[@]} > 0)); do
    for name in "${!RUNNING[@]}"; do
        alive "${RUNNING[$name]}" && continue
        stop_service "${RUNNING[$name]}" # reaps it
        unset "RUNNING[$name]"
        echo "run.sh: $name exited with status $STOP_RC${RUNNING[*]:+; the others keep running}"
    done
    sleep 0.5
done
die "every service has exited"
