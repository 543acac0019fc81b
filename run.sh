#!/usr/bin/env bash
# run.sh: build both services (the debug profile, as `cargo run` and `cargo test` do, so
# nothing is compiled twice), start them side by side in this terminal,
# wait until each answers /health, show a few requests to try, then stream both logs.
# Ctrl-C (or SIGTERM) stops both services and waits for them to exit.
#
# Environment:
#   SERVICE_A_LISTEN   Service A's address (default 127.0.0.1:8080; port 0 = any free port)
#   SERVICE_B_LISTEN   Service B's address (default 127.0.0.1:8081; port 0 = any free port)
#   SERVICE_A_URL      where B finds A (default: the address A actually bound)
#   ECHO_BIN_DIR       directory with prebuilt service_a and service_b: skips the build
#   RUN_READY_TIMEOUT  seconds to wait for each service to become ready (default 20)
#   SERVICE_A_LOG_LEVEL, SERVICE_B_LOG_LEVEL  debug or trace are kept; anything quieter
#                      becomes info (run.sh shows the logs and reads the bound port there)
#   KEEP_LOG_DIR       set: keep the log directory after the stop
#   Every other SERVICE_* variable (SERVICE_A_DELAY_MS, SERVICE_B_TIMEOUT_MS, ...) is read
#   by the services themselves.
#
# Logs also go to files in a fresh directory under ${TMPDIR:-/tmp}, named at start; it is
# removed when run.sh ends (KEEP_LOG_DIR=1 keeps it).
# If one service exits on its own (say you `kill` A to watch B answer 503), the other keeps
# running; run.sh ends when both are gone.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case ${1:-} in
    -h | --help)
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    '') ;;
    *)
        echo "run.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
esac

FAILED_EARLY=0
LOG_DIR='' A_PID='' B_PID='' TAIL_PID=''
# die MESSAGE: one line on stderr, stop whatever was started, exit 1.
die() {
    echo "run.sh: $1" >&2
    FAILED_EARLY=1
    exit 1
}

command -v curl >/dev/null 2>&1 || die "curl is required to check that the services are up"

A_LISTEN=${SERVICE_A_LISTEN:-127.0.0.1:8080}
B_LISTEN=${SERVICE_B_LISTEN:-127.0.0.1:8081}
READY_TIMEOUT=${RUN_READY_TIMEOUT:-20}

# ---------------------------------------------------------------- build

if [[ -n ${ECHO_BIN_DIR:-} ]]; then
    A_BIN=$ECHO_BIN_DIR/service_a
    B_BIN=$ECHO_BIN_DIR/service_b
else
    echo "run.sh: building service_a and service_b..."
    (cd "$ROOT" && cargo build -p service_a -p service_b) || die "the build failed"
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$ROOT/$target
    A_BIN=$target/debug/service_a
    B_BIN=$target/debug/service_b
fi
for bin in "$A_BIN" "$B_BIN"; do
    [[ -x $bin ]] || die "no executable at $bin"
done

# ---------------------------------------------------------------- processes

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/echo-run.XXXXXX") || die "cannot create a log directory"
A_LOG=$LOG_DIR/service_a.log
B_LOG=$LOG_DIR/service_b.log
: >"$A_LOG"
: >"$B_LOG"

# alive PID: running and not a zombie waiting to be reaped.
alive() {
    [[ -n $1 ]] || return 1
    if [[ -d /proc/$1 ]]; then
        local stat
        { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
        stat=${stat##*) }
        [[ ${stat:0:1} != Z ]]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# stop PID: SIGTERM, up to 10 s for a graceful exit, then SIGKILL; reaps it.
stop() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    alive "$pid" || {
        wait "$pid" 2>/dev/null
        return
    }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

STOPPING=0
# shellcheck disable=SC2317  # invoked by traps
shutdown() {
    local rc=${1:-0}
    [[ $STOPPING -eq 1 ]] && return
    STOPPING=1
    trap '' INT TERM
    if [[ $FAILED_EARLY -eq 1 ]]; then
        # The one-line reason is already out; stop quietly, keep no logs nobody was shown.
        stop "$B_PID"
        stop "$A_PID"
        [[ -z $LOG_DIR || -n ${KEEP_LOG_DIR:-} ]] || rm -rf "$LOG_DIR"
        exit "$rc"
    fi
    if alive "$A_PID" || alive "$B_PID"; then
        echo
        echo "run.sh: stopping both services..."
    fi
    stop "$B_PID"
    stop "$A_PID"
    if [[ -n $TAIL_PID ]]; then
        sleep 0.3 # let the shutdown lines reach the terminal
        kill -TERM "$TAIL_PID" 2>/dev/null
        wait "$TAIL_PID" 2>/dev/null
    fi
    if [[ -n ${KEEP_LOG_DIR:-} ]]; then
        echo "run.sh: stopped (logs kept in $LOG_DIR)"
    else
        rm -rf "$LOG_DIR"
        echo "run.sh: stopped (log directory $LOG_DIR removed; KEEP_LOG_DIR=1 keeps it)"
    fi
    exit "$rc"
}
trap 'shutdown 0' INT TERM
trap 'shutdown $?' EXIT

# usable_url URL: a bound address clients can reach (0.0.0.0 / [::] become loopback).
usable_url() {
    local url=$1
    url=${url/\/\/0.0.0.0:/\/\/127.0.0.1:}
    url=${url/\/\/\[::\]:/\/\/[::1]:}
    printf '%s' "$url"
}

# wait_ready NAME PID LOG LISTEN: until the service logged its bound address and answers
# GET /health with 200. Sets READY_URL. A service that exits first ends run.sh with the
# service's own one-line error.
wait_ready() {
    local name=$1 pid=$2 log=$3 listen=$4 url line deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! alive "$pid"; then
            wait "$pid"
            local rc=$?
            line=$(grep -v '^[0-9]\{4\}-[0-9][0-9]-[0-9][0-9] ' "$log" | tail -n 1)
            [[ -n $line ]] || line=$(tail -n 1 "$log")
            die "$name could not start (exit $rc): ${line:-no output}"
        fi
        url=''
        line=$(grep -o -m1 'listening on http://[^ ]*' "$log")
        if [[ -n $line ]]; then
            url=$(usable_url "${line#listening on }")
        elif [[ $listen != *:0 ]]; then
            url=$(usable_url "http://$listen") # INFO lines hidden by the log level
        fi
        if [[ -n $url ]] && curl -fsS -o /dev/null --max-time 1 "$url/health" 2>/dev/null && alive "$pid"; then
            READY_URL=$url
            return 0
        fi
        sleep 0.1
    done
    KEEP_LOG_DIR=1
    die "$name did not answer $listen/health within ${READY_TIMEOUT}s (log: $log)"
}

# At least INFO: the access lines are what there is to watch, and "listening on" gives the port.
at_least_info() {
    case ${1,,} in
        debug | trace) printf '%s' "$1" ;;
        *) printf info ;;
    esac
}

"$A_BIN" --listen "$A_LISTEN" --log-level "$(at_least_info "${SERVICE_A_LOG_LEVEL:-info}")" >>"$A_LOG" 2>&1 &
A_PID=$!
wait_ready service_a "$A_PID" "$A_LOG" "$A_LISTEN"
A_URL=$READY_URL

b_args=(--listen "$B_LISTEN" --log-level "$(at_least_info "${SERVICE_B_LOG_LEVEL:-info}")")
[[ -n ${SERVICE_A_URL:-} ]] || b_args+=(--service-a-url "$A_URL")
"$B_BIN" "${b_args[@]}" >>"$B_LOG" 2>&1 &
B_PID=$!
wait_ready service_b "$B_PID" "$B_LOG" "$B_LISTEN"
B_URL=$READY_URL

cat <<EOF

Both services are up.
  service_a  $A_URL  (pid $A_PID)
  service_b  $B_URL  (pid $B_PID)  -> calls ${SERVICE_A_URL:-$A_URL}

Try, from another terminal:
EOF
try() { printf '  %-50s # %s\n' "$1" "$2"; }
try "curl '$B_URL/call-echo?msg=hello'" "200: B relays A's echo"
try "curl -i '$B_URL/call-echo'" "400: missing msg"
try "curl '$A_URL/echo?msg=direct'" "A on its own"
try "kill $A_PID" "stops A only; B keeps running and then..."
try "curl -i '$B_URL/call-echo?msg=hello'" "...answers 503, kind \"connect\""
try "SERVICE_A_DELAY_MS=3000 ./run.sh" "a slow A: 503, kind \"timeout\", after 2 s"
cat <<EOF

Logs follow, also written to $A_LOG and $B_LOG
(removed at the stop unless KEEP_LOG_DIR=1). Ctrl-C stops both.

EOF

tail -q -n +1 -f "$A_LOG" "$B_LOG" &
TAIL_PID=$!

# Report a service that exits on its own (the other keeps running); end when both are gone.
A_GONE=0 B_GONE=0
while :; do
    a_dead=0 b_dead=0
    alive "$A_PID" || a_dead=1
    alive "$B_PID" || b_dead=1
    if [[ $a_dead -eq 1 && $b_dead -eq 1 ]]; then
        echo "run.sh: both services have exited"
        shutdown 1
    fi
    if [[ $a_dead -eq 1 && $A_GONE -eq 0 ]]; then
        A_GONE=1
        wait "$A_PID"
        echo "run.sh: service_a (pid $A_PID) exited with status $?; service_b keeps running (Ctrl-C stops it)"
    fi
    if [[ $b_dead -eq 1 && $B_GONE -eq 0 ]]; then
        B_GONE=1
        wait "$B_PID"
        echo "run.sh: service_b (pid $B_PID) exited with status $?; service_a keeps running (Ctrl-C stops it)"
    fi
    sleep 0.5
done
