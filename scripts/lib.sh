# shellcheck shell=bash disable=SC2034  # the variables set here are read by the sourcing scripts
# scripts/lib.sh: what run.sh, test_scenarios.sh and tests/two_hosts.sh share. Source it, do
# not run it. It sets no shell option, and every function is safe under `set -euo pipefail`.

ECHO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB_PIDS=()   # services started by start_service and not yet reaped by stop_service
LIB_ERROR=''  # the reason of the last failed build_services or start_service
PASSED=0 FAILED=0 SKIPPED=0 FAILED_NAMES=()

# Colours only on a terminal and without NO_COLOR: escape codes garble logs and CI output.
if [[ -t 1 && -z ${NO_COLOR:-} && ${TERM:-dumb} != dumb ]]; then
    GREEN=$'\e[32m' RED=$'\e[31m' YELLOW=$'\e[33m' BOLD=$'\e[1m' DIM=$'\e[2m' RESET=$'\e[0m'
else
    GREEN='' RED='' YELLOW='' BOLD='' DIM='' RESET=''
fi

# print_help FILE: a script's --help is its header comment, so the two cannot disagree.
print_help() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$1"; }

# pass NAME: a passed check, counted for the summary and coloured for a terminal.
pass() {
    PASSED=$((PASSED + 1))
    printf '  %sPASS%s %s\n' "$GREEN" "$RESET" "$1"
}

# fail NAME [DETAIL...]: a failed check, named again in the summary; one line per detail.
fail() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    printf '  %sFAIL%s %s\n' "$RED" "$RESET" "$1"
    shift
    [[ $# -eq 0 ]] || printf '       %s\n' "$@"
}

# skip NAME WHY: a check this setup cannot run, counted apart: a skip is not a failure.
skip() {
    SKIPPED=$((SKIPPED + 1))
    printf '  %sSKIP%s %s %s(%s)%s\n' "$YELLOW" "$RESET" "$1" "$DIM" "$2" "$RESET"
}

# build_services [CARGO_FLAG...]: the debug build of both services (the profile `cargo run`
# and `cargo test` use, so nothing is compiled twice), or the prebuilt binaries in
# ECHO_BIN_DIR when set. Sets A_BIN and B_BIN; returns 1 with LIB_ERROR set on failure.
build_services() {
    local dir
    if [[ -n ${ECHO_BIN_DIR:-} ]]; then
        dir=$ECHO_BIN_DIR
    else
        if ! (cd "$ECHO_ROOT" && cargo build "$@" -p service_a -p service_b); then
            LIB_ERROR="cargo build -p service_a -p service_b failed"
            return 1
        fi
        dir=${CARGO_TARGET_DIR:-target}
        [[ $dir == /* ]] || dir=$ECHO_ROOT/$dir
        dir=$dir/debug
    fi
    A_BIN=$dir/service_a
    B_BIN=$dir/service_b
    if [[ ! -x $A_BIN || ! -x $B_BIN ]]; then
        LIB_ERROR="no executable service_a and service_b in $dir"
        return 1
    fi
}

# alive PID: true while PID runs; unlike `kill -0`, an exited child not yet reaped is gone.
alive() {
    local stat
    [[ -n $1 ]] || return 1
    if [[ -d /proc/$1 ]]; then
        { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
        stat=${stat##*) }
        [[ ${stat:0:1} != Z ]]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# start_service LOG COMMAND...: start COMMAND in the background, stdout and stderr appended to
# LOG, and wait for its `listening on http://IP:PORT` line: the services print it once bound,
# so it is the readiness signal and names the port (port 0 included). Sets SERVICE_PID and
# SERVICE_URL (0.0.0.0 and [::] made loopback, for curl). When COMMAND exits first, or prints
# no such line within READY_TIMEOUT (default 20) s, nothing is left running and it returns 1
# with LIB_ERROR holding the service's own one-line error.
start_service() {
    local log=$1 skip line rc=0 deadline=$((SECONDS + ${READY_TIMEOUT:-20}))
    shift
    touch "$log"
    skip=$(($(wc -l <"$log") + 1)) # a restart appends to the log of the previous run
    "$@" >>"$log" 2>&1 &
    SERVICE_PID=$!
    LIB_PIDS+=("$SERVICE_PID")
    while :; do
        line=$(tail -n "+$skip" "$log" | grep -o -m1 'listening on http://[^ ]*') || true
        if [[ -n $line ]]; then
            SERVICE_URL=${line#listening on }
            SERVICE_URL=${SERVICE_URL/\/\/0.0.0.0:/\/\/127.0.0.1:}
            SERVICE_URL=${SERVICE_URL/\/\/\[::\]:/\/\/[::1]:}
            return 0
        fi
        if ! alive "$SERVICE_PID"; then
            stop_service "$SERVICE_PID"
            rc=$STOP_RC
            # Errors are the one stderr line not in the log format; else the last line.
            line=$(tail -n "+$skip" "$log" | grep -v '^[0-9]\{4\}-[0-9][0-9]-[0-9][0-9] ' | tail -n 1) || true
            [[ -n $line ]] || line=$(tail -n "+$skip" "$log" | tail -n 1)
            LIB_ERROR="exited with status $rc before listening: ${line:-no output}"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            stop_service "$SERVICE_PID"
            LIB_ERROR="no 'listening on' line within ${READY_TIMEOUT:-20}s (log: $log)"
            return 1
        fi
        sleep 0.05
    done
}

# stop_service PID: SIGINT, the services' immediate graceful stop (SIGTERM and SIGHUP mean a
# lame-duck drain for orchestrators); up to 10 s for in-flight requests (the services allow
# 5 s), then SIGKILL; reaps it and sets STOP_RC to its exit status. Only what start_service
# started is signalled. (A script's background job starts with SIGINT ignored: the services
# install their own handler; any other command must do so too.)
stop_service() {
    local pid=$1 p i keep=()
    STOP_RC=0
    [[ " ${LIB_PIDS[*]} " == *" $pid "* ]] || return 0
    if alive "$pid"; then kill -INT "$pid" 2>/dev/null || true; fi
    for ((i = 0; i < 200; i++)); do
        alive "$pid" || break
        sleep 0.05
    done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || STOP_RC=$?
    for p in "${LIB_PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    LIB_PIDS=("${keep[@]}")
}

# stop_all: stop every service still running, the last started first (B before the A it calls).
stop_all() {
    while ((${#LIB_PIDS[@]} > 0)); do
        stop_service "${LIB_PIDS[-1]}"
    done
}
