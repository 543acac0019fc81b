#!/usr/bin/env bash
# The benchmark, in one command:   bench/run.sh
#
# Builds the release binaries, starts Service A, Service B and a trivial fixed-response
# server (bench/ceiling, the loopback ceiling) on free loopback ports, drives each with wrk
# at 1, 16 and 64 connections, and writes bench/RESULTS.md: req/s, p50, p99, the share of
# the ceiling, CPU per request, peak RSS, TIME_WAIT sockets, access-log counts, and a
# met/missed table of the performance goals. Both services run at their defaults (one
# thread per connection; B's --max-inflight 64) with logging on (info, stdout → a file).
# Every wrk run, warm-ups included, is checked for non-2xx answers and socket errors.
#
# Exit status: 0 once the results are written, whatever the goals say (they are printed and
# tabled as met/missed); non-zero only when the benchmark itself could not run.
#
# Environment (all optional):
#   BENCH_DURATION    seconds per measured point                      (default 5)
#   BENCH_WARMUP      seconds of warm-up before each point, 0 = none  (default 1)
#   BENCH_CONNS       connection counts                               (default "1 16 64")
#   BENCH_MAX_INFLIGHT_B  --max-inflight of Service B   (default: the service's own default)
#   BENCH_WRK_TIMEOUT wrk --timeout                                   (default 2s)
#   BENCH_OUT         results file                                    (default bench/RESULTS.md)
#   BENCH_KEEP        1 = keep the work directory (logs, wrk output)  (default 0)
#   BENCH_QUIET_WAIT  most seconds to wait before each point for the machine to be idle
#                     (< 10 % busy), so that a concurrent build does not skew it (default 20)
#   BENCH_NO_BUILD    1 = do not run cargo build (binaries must exist)
set -euo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
CONNS=${BENCH_CONNS:-"1 16 64"}
MAX_INFLIGHT_B=${BENCH_MAX_INFLIGHT_B:-}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2s}
OUT=${BENCH_OUT:-bench/RESULTS.md}
[[ $OUT == /* ]] || OUT=$ROOT/$OUT
KEEP=${BENCH_KEEP:-0}
QUIET_WAIT=${BENCH_QUIET_WAIT:-20}
MSG=hello
MAX_CONNS=$(for c in $CONNS; do echo "$c"; done | sort -n | tail -1)

# Goals, all at both services' defaults with logging on, judged against the ceiling of the
# same run: at 64 connections A /echo >= 90 % of the ceiling's req/s with p99 < 5 ms, and
# B /call-echo (the B→A chain) >= 40 % with p99 < 10 ms; A at 1 connection p99 <= 0.2 ms;
# zero non-2xx and zero socket errors (connect, read, write, timeout) in every wrk run,
# warm-ups included; each service < 32 MB peak RSS; < 1000 TIME_WAIT sockets.
GOAL_HI_CONNS=64
GOAL_LO_CONNS=1
GOAL_A_PCT=90
GOAL_A_P99_MS=5
GOAL_B_PCT=40
GOAL_B_P99_MS=10
GOAL_A1_P99_MS=0.2
GOAL_TIME_WAIT=1000
GOAL_RSS_KB=$((32 * 1024))

for v in "$DURATION" "$WARMUP" "$QUIET_WAIT" $CONNS; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "bench: '$v' is not a whole number" >&2; exit 2; }
done
[[ -z $MAX_INFLIGHT_B || $MAX_INFLIGHT_B =~ ^[0-9]+$ ]] ||
    { echo "bench: '$MAX_INFLIGHT_B' is not a whole number" >&2; exit 2; }
((DURATION >= 1)) || { echo "bench: BENCH_DURATION must be >= 1" >&2; exit 2; }

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
    BOLD=$'\e[1m' GREEN=$'\e[32m' RED=$'\e[31m' DIM=$'\e[2m' RESET=$'\e[0m'
else
    BOLD='' GREEN='' RED='' DIM='' RESET=''
fi
say() { printf '%s==>%s %s\n' "$BOLD" "$RESET" "$*"; }
die() { printf '%sbench: %s%s\n' "$RED" "$*" "$RESET" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench.XXXXXX)
PIDS=()

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 60; i++)); do # at most 6 s each (services grant 5 s of grace)
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        echo "bench: work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Tools and build
# ---------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    say "wrk is missing: installing it from Debian's packages"
    command -v apt-get >/dev/null || die "wrk is missing and there is no apt-get; install wrk"
    SUDO=''
    ((EUID == 0)) || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null ||
        die "apt-get install wrk failed"
fi
command -v ss >/dev/null || die "ss (iproute2) is needed to count TIME_WAIT sockets"

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    say "building release binaries (service_a, service_b, bench_ceiling)"
    cargo build --release --quiet -p service_a -p service_b -p bench_ceiling ||
        die "cargo build failed"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_A=$TARGET_DIR/release/service_a
BIN_B=$TARGET_DIR/release/service_b
BIN_C=$TARGET_DIR/release/bench_ceiling
for bin in "$BIN_A" "$BIN_B" "$BIN_C"; do
    [[ -x $bin ]] || die "$bin is missing (build it, or unset BENCH_NO_BUILD)"
done

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)

# start NAME LOGFILE CMD...: starts CMD with stdout+stderr to LOGFILE, waits (at most 10 s)
# for its `listening on http://IP:PORT` line; sets STARTED_PID and STARTED_URL.
start() {
    local name=$1 log=$2 i url=''
    shift 2
    "$@" >"$log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    for ((i = 0; i < 100; i++)); do
        url=$(grep -o -m1 'listening on http://[0-9.]*:[0-9]*' "$log" 2>/dev/null | sed 's/^listening on //') || true
        [[ -n $url ]] && break
        kill -0 "$STARTED_PID" 2>/dev/null || die "$name exited at start: $(tail -3 "$log")"
        sleep 0.1
    done
    [[ -n $url ]] || die "$name did not print 'listening on http://…' within 10 s"
    STARTED_URL=$url
}

proc_ticks() { # utime+stime of a process, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
machine_ticks() { # "busy total irq+softirq" over all CPUs, in clock ticks
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t, $7 + $8; exit }' /proc/stat
}
# CPU time of this shell's waited-for children (wrk, mostly), in clock ticks, from the output
# of `times`, which must run in this shell itself (`times >FILE`): a subshell has no children.
times_ticks() {
    awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); t += p[1] * 60 + p[2] }
        printf "%.0f\n", t * hz }' "$1"
}
# CPU ticks of every other user-space process (with the children it reaped): not the servers,
# not this script (whose children are wrk and the probes), not kernel threads (ppid 2).
others_ticks() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v skip=" $PID_A $PID_B $PID_C $$ " '
        { pid = $1; sub(/^.*\) /, "") }
        pid != 2 && $2 != 2 && index(skip, " " pid " ") == 0 { t += $12 + $13 + $14 + $15 }
        END { print t + 0 }'
}
# Waits (at most BENCH_QUIET_WAIT s) until the machine is under 10 % busy over half a second,
# so that a point does not start while something else (a build) holds the CPUs. Prints the
# last busy percentage.
wait_quiet() {
    local i b0 t0 b1 t1 pct=0
    for ((i = 0; i < QUIET_WAIT * 2; i++)); do
        read -r b0 t0 _ < <(machine_ticks)
        sleep 0.5
        read -r b1 t1 _ < <(machine_ticks)
        pct=$(((t1 > t0) ? 100 * (b1 - b0) / (t1 - t0) : 0))
        ((pct < 10)) && break
    done
    echo "$pct"
}
# Established server-side connections on PORT: "peer bytes_received recv_q", sorted.
conn_snap() {
    ss -Htin state established "( sport = :$1 )" | awk '
        $1 ~ /^[0-9]+$/ && NF >= 4 { peer = $4; q = $1; next }
        { for (i = 1; i <= NF; i++) if ($i ~ /^bytes_received:/) { split($i, kv, ":"); print peer, kv[2], q } }' | sort
}
# stalled SNAP1 SNAP2 → connections that received nothing new between the snapshots while a
# request sat unread in their receive queue: nobody served them for the whole interval.
stalled() {
    join "$1" "$2" | awk '$2 == $4 && $5 > 0 { n++ } END { print n + 0 }'
}
status_kb() { # status_kb PID FIELD → value in kB (VmHWM, VmRSS) or count (Threads)
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}
port_of() { echo "${1##*:}"; }
# config_of LOG KEY... → "KEY=VALUE …" from the service's first log line (its effective config)
config_of() {
    local log=$1
    shift
    head -1 "$log" | awk -v keys="$*" '{
        n = split(keys, k, " ")
        for (j = 1; j <= n; j++) {
            v = k[j] "=?"
            for (i = 1; i <= NF; i++) if (index($i, k[j] "=") == 1) { v = $i; break }
            printf "%s%s", (j > 1 ? " " : ""), v
        }
    }'
}

# parse_wrk FILE → shell assignments: RPS TOTAL P50 P99 (ms) NON2XX ERR_* TIMEOUTS
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return -1
        }
        BEGIN { rps = 0; total = 0; p50 = -1; p99 = -1; non2xx = 0; c = 0; r = 0; w = 0; t = 0 }
        /Requests\/sec:/            { rps = $2 }
        / requests in /             { total = $1 }
        /^ *50% /                   { p50 = ms($2) }
        /^ *99% /                   { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/            { gsub(/,/, ""); c = $4; r = $6; w = $8; t = $10 }
        END {
            printf "RPS=%.0f TOTAL=%d P50=%.3f P99=%.3f NON2XX=%d ERR_CONNECT=%d ERR_READ=%d ERR_WRITE=%d TIMEOUTS=%d\n",
                rps, total, p50, p99, non2xx, c, r, w, t
        }' "$1"
}

# ---------------------------------------------------------------------------------------
# Start everything
# ---------------------------------------------------------------------------------------
TW_BEFORE=$(ss -Htan state time-wait | wc -l)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

say "starting the services and the ceiling server on free loopback ports (logs → $WORK)"
# Both services run with their own defaults (one thread per connection, --max-connections
# from the open-file limit), B's --max-inflight too (64: covers 64 connections) unless
# BENCH_MAX_INFLIGHT_B says otherwise.
ARGS_A=(--listen 127.0.0.1:0 --log-level info)
start service_a "$WORK/service_a.log" "$BIN_A" "${ARGS_A[@]}"
PID_A=$STARTED_PID URL_A=$STARTED_URL
ARGS_B=(--listen 127.0.0.1:0 --log-level info --timeout-ms 2000)
[[ -n $MAX_INFLIGHT_B ]] && ARGS_B+=(--max-inflight "$MAX_INFLIGHT_B")
start service_b "$WORK/service_b.log" "$BIN_B" "${ARGS_B[@]}" --service-a-url "$URL_A"
PID_B=$STARTED_PID URL_B=$STARTED_URL
# The ceiling exits by itself after --max-secs, in case this script is killed with -9.
MAX_SECS=$((60 + $(wc -w <<<"$CONNS") * 3 * (DURATION + WARMUP + QUIET_WAIT + 5)))
start bench_ceiling "$WORK/ceiling.log" "$BIN_C" --listen 127.0.0.1:0 --max-secs "$MAX_SECS"
PID_C=$STARTED_PID URL_C=$STARTED_URL
PORT_A=$(port_of "$URL_A") PORT_B=$(port_of "$URL_B") PORT_C=$(port_of "$URL_C")
echo "    service_a  $URL_A  (pid $PID_A, ${ARGS_A[*]:2})"
echo "    service_b  $URL_B  (pid $PID_B, ${ARGS_B[*]:2})"
echo "    ceiling    $URL_C  (pid $PID_C)"

# One request each, so a broken service fails here rather than as a table of errors.
if command -v curl >/dev/null; then
    check() {
        local got
        got=$(curl -s --max-time 5 "$1") || die "GET $1 failed"
        [[ $got == "$2" ]] || die "GET $1 answered '$got', expected '$2'"
    }
    check "$URL_A/echo?msg=$MSG" "{\"echo\":\"$MSG\"}"
    check "$URL_B/call-echo?msg=$MSG" "{\"msg\":\"$MSG\",\"echo_response\":{\"echo\":\"$MSG\"}}"
    check "$URL_C/" "{\"echo\":\"$MSG\"}"
fi

# ---------------------------------------------------------------------------------------
# The points
# ---------------------------------------------------------------------------------------
TARGETS="ceiling a b"
declare -A URL=([ceiling]="$URL_C/" [a]="$URL_A/echo?msg=$MSG" [b]="$URL_B/call-echo?msg=$MSG")
declare -A LABEL=([ceiling]="ceiling (trivial server) /" [a]="A /echo" [b]="B /call-echo")
declare -A R # results, keyed "target,conns,field"
WU_NON2XX=0 WU_TIMEOUTS=0 WU_ERRORS=0 WU_REQUESTS_A=0 WU_REQUESTS_B=0
WRK_RUNS=0 EMPTY_RUNS=0 # every wrk run, warm-ups included; runs that completed no request
# Set by `eval "$(parse_wrk FILE)"`:
RPS=0 TOTAL=0 P50=0 P99=0 NON2XX=0 ERR_CONNECT=0 ERR_READ=0 ERR_WRITE=0 TIMEOUTS=0
NPOINTS=$(($(wc -w <<<"$CONNS") * 3))
POINT=0
START_TIME=$(date +%s)

wrk_run() { # wrk_run OUTFILE CONNS SECONDS URL
    local threads=$(($2 < 2 ? $2 : 2))
    wrk -t"$threads" -c"$2" -d"${3}s" --timeout "$WRK_TIMEOUT" --latency "$4" >"$1" 2>&1
}

# The stall probe: two snapshots of the server-side sockets, INTERVAL s apart, centred in the
# measured run. wrk does not report a connection the server never reads from (no response,
# so no latency sample and no timeout), so it is detected here instead.
PROBE_INTERVAL=$(awk -v d="$DURATION" 'BEGIN { i = d / 3; if (i > 1) i = 1; print i }')
PROBE_DELAY=$(awk -v d="$DURATION" -v i="$PROBE_INTERVAL" 'BEGIN { print d / 2 - i / 2 }')
declare -A PROBE_PORTS=([ceiling]="$PORT_C" [a]="$PORT_A" [b]="$PORT_B $PORT_A")
declare -A PORT_NAME=([$PORT_C]=ceiling [$PORT_A]=A [$PORT_B]=B)

say "measuring: ${DURATION}s per point (+${WARMUP}s warm-up), connections: $CONNS, $NPOINTS points"
for conns in $CONNS; do
    for t in $TARGETS; do
        POINT=$((POINT + 1))
        printf '  [%d/%d] %-28s c=%-3s ' "$POINT" "$NPOINTS" "${LABEL[$t]}" "$conns"
        R[$t,$conns,quiet]=$(wait_quiet)
        wu_flag=''
        for f in TOTAL NON2XX ERR_CONNECT ERR_READ ERR_WRITE TIMEOUTS; do R[$t,$conns,wu_$f]=0; done
        if ((WARMUP > 0)); then
            # The warm-up is checked like a measured run: it opens fresh connections at this
            # count, which is where a server that cannot take a burst fails.
            wrk_run "$WORK/warmup-$t-$conns.txt" "$conns" "$WARMUP" "${URL[$t]}" ||
                die "wrk failed: $(tail -3 "$WORK/warmup-$t-$conns.txt")"
            eval "$(parse_wrk "$WORK/warmup-$t-$conns.txt")"
            WRK_RUNS=$((WRK_RUNS + 1))
            ((TOTAL > 0)) || EMPTY_RUNS=$((EMPTY_RUNS + 1))
            for f in TOTAL NON2XX ERR_CONNECT ERR_READ ERR_WRITE TIMEOUTS; do
                R[$t,$conns,wu_$f]=${!f}
            done
            WU_NON2XX=$((WU_NON2XX + NON2XX)) WU_TIMEOUTS=$((WU_TIMEOUTS + TIMEOUTS))
            WU_ERRORS=$((WU_ERRORS + ERR_CONNECT + ERR_READ + ERR_WRITE))
            [[ $t == a ]] && WU_REQUESTS_A=$((WU_REQUESTS_A + TOTAL))
            [[ $t == b ]] && WU_REQUESTS_B=$((WU_REQUESTS_B + TOTAL))
            ((NON2XX + ERR_CONNECT + ERR_READ + ERR_WRITE + TIMEOUTS > 0)) &&
                wu_flag="${RED}warm-up: non-2xx $NON2XX, socket errors $((ERR_CONNECT + ERR_READ + ERR_WRITE)), timeouts $TIMEOUTS${RESET} "
            ((TOTAL > 0)) || wu_flag+="${RED}warm-up: no request completed${RESET} "
        fi
        read -r m_busy0 m_total0 m_irq0 < <(machine_ticks)
        times >"$WORK/times"
        a0=$(proc_ticks "$PID_A") b0=$(proc_ticks "$PID_B") c0=$(proc_ticks "$PID_C") w0=$(times_ticks "$WORK/times") o0=$(others_ticks)
        out="$WORK/wrk-$t-$conns.txt"
        wrk_run "$out" "$conns" "$DURATION" "${URL[$t]}" &
        wrk_pid=$!
        sleep "$PROBE_DELAY"
        for port in ${PROBE_PORTS[$t]}; do conn_snap "$port" >"$WORK/snap1-$port"; done
        sleep "$PROBE_INTERVAL"
        stall_text='' stall_total=0
        for port in ${PROBE_PORTS[$t]}; do
            conn_snap "$port" >"$WORK/snap2-$port"
            n=$(stalled "$WORK/snap1-$port" "$WORK/snap2-$port")
            all=$(wc -l <"$WORK/snap2-$port")
            stall_total=$((stall_total + n))
            stall_text+="${stall_text:+, }${PORT_NAME[$port]} $n/$all"
        done
        wait "$wrk_pid" || die "wrk failed: $(tail -3 "$out")"
        read -r m_busy1 m_total1 m_irq1 < <(machine_ticks)
        times >"$WORK/times"
        a1=$(proc_ticks "$PID_A") b1=$(proc_ticks "$PID_B") c1=$(proc_ticks "$PID_C") w1=$(times_ticks "$WORK/times") o1=$(others_ticks)
        eval "$(parse_wrk "$out")"
        WRK_RUNS=$((WRK_RUNS + 1))
        ((TOTAL > 0)) || EMPTY_RUNS=$((EMPTY_RUNS + 1))
        for f in RPS TOTAL P50 P99 NON2XX ERR_CONNECT ERR_READ ERR_WRITE TIMEOUTS; do
            R[$t,$conns,$f]=${!f}
        done
        R[$t,$conns,stalled]=$stall_total R[$t,$conns,stalled_text]=$stall_text
        R[$t,$conns,ticks_a]=$((a1 - a0)) R[$t,$conns,ticks_b]=$((b1 - b0)) R[$t,$conns,ticks_c]=$((c1 - c0))
        R[$t,$conns,ticks_wrk]=$((w1 - w0)) R[$t,$conns,ticks_irq]=$((m_irq1 - m_irq0))
        R[$t,$conns,ticks_others]=$((o1 - o0))
        R[$t,$conns,ticks_busy]=$((m_busy1 - m_busy0)) R[$t,$conns,ticks_total]=$((m_total1 - m_total0))
        errs=$((NON2XX + ERR_CONNECT + ERR_READ + ERR_WRITE + TIMEOUTS))
        flag=$wu_flag
        ((TOTAL > 0)) || flag+="${RED}no request completed${RESET} "
        ((errs > 0)) && flag+="${RED}non-2xx $NON2XX, socket errors $((ERR_CONNECT + ERR_READ + ERR_WRITE)), timeouts $TIMEOUTS${RESET} "
        ((stall_total > 0)) && flag+="${RED}stalled connections: $stall_text${RESET} "
        ((R[$t,$conns,quiet] >= 10)) && flag+="${RED}machine was ${R[$t,$conns,quiet]} % busy before${RESET} "
        printf '%9s req/s  p50 %7.3f ms  p99 %8.3f ms  %s\n' "$RPS" "$P50" "$P99" "${flag:-${DIM}ok${RESET}}"
    done
done
ELAPSED=$(($(date +%s) - START_TIME))

# ---------------------------------------------------------------------------------------
# After the run: TIME_WAIT, memory, logs
# ---------------------------------------------------------------------------------------
tw_count() { ss -Htan state time-wait "$1" | wc -l; }
TW_ALL=$(ss -Htan state time-wait | wc -l)
TW_PORTS=$(tw_count "( sport = :$PORT_A or dport = :$PORT_A or sport = :$PORT_B or dport = :$PORT_B or sport = :$PORT_C or dport = :$PORT_C )")
TW_TO_A=$(tw_count "( dport = :$PORT_A )") TW_BY_A=$(tw_count "( sport = :$PORT_A )")
TW_TO_B=$(tw_count "( dport = :$PORT_B )") TW_BY_B=$(tw_count "( sport = :$PORT_B )")
TW_TO_C=$(tw_count "( dport = :$PORT_C )") TW_BY_C=$(tw_count "( sport = :$PORT_C )")
EST_A=$(ss -Htan state established "( sport = :$PORT_A )" | wc -l)

HWM_A=$(status_kb "$PID_A" VmHWM) HWM_B=$(status_kb "$PID_B" VmHWM) HWM_C=$(status_kb "$PID_C" VmHWM)
RSS_A=$(status_kb "$PID_A" VmRSS) RSS_B=$(status_kb "$PID_B" VmRSS)
THR_A=$(status_kb "$PID_A" Threads) THR_B=$(status_kb "$PID_B" Threads) THR_C=$(status_kb "$PID_C" Threads)

sleep 0.5 # let the last access lines reach the files
LOG_A_200=$(grep -c ' INFO service_a GET /echo 200 ' "$WORK/service_a.log" || true)
LOG_B_200=$(grep -c ' INFO service_b GET /call-echo 200 ' "$WORK/service_b.log" || true)
LOG_B_CALLS=$(grep -c ' service_b call to Service A ok: ' "$WORK/service_b.log" || true)
LOG_A_OTHER=$(grep -c ' service_a GET /echo [^2]' "$WORK/service_a.log" || true)
LOG_B_OTHER=$(grep -c ' service_b GET /call-echo [^2]' "$WORK/service_b.log" || true)
LOG_B_FAILED=$(grep -cE ' call to Service A (failed|not made): ' "$WORK/service_b.log" || true)
LOG_BYTES_A=$(stat -c %s "$WORK/service_a.log") LOG_BYTES_B=$(stat -c %s "$WORK/service_b.log")
FAILED_KINDS=$(grep -oE ' call to Service A (failed|not made): .* kind=[a-z_]*' "$WORK/service_b.log" | sed 's/.*kind=//' | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}' || true)

# Requests wrk completed per service (measured + warm-up, + 1 curl check each); the access
# logs can hold a few more: requests in flight when wrk stopped are answered but not counted.
SENT_A=$((WU_REQUESTS_A + 1)) SENT_B=$((WU_REQUESTS_B + 1))
for conns in $CONNS; do
    SENT_A=$((SENT_A + R[a,$conns,TOTAL])) SENT_B=$((SENT_B + R[b,$conns,TOTAL]))
done

# ---------------------------------------------------------------------------------------
# Derived figures and goals
# ---------------------------------------------------------------------------------------
calc() { awk "BEGIN { printf \"%s\", $1 }"; }
pct() { calc "($2 > 0) ? sprintf(\"%.1f\", 100 * $1 / $2) : \"n/a\""; }
us_per_req() { calc "($2 > 0) ? sprintf(\"%.1f\", $1 * 1000000 / $CLK_TCK / $2) : \"n/a\""; }
mb() { calc "sprintf(\"%.1f\", $1 / 1024)"; }

# Every wrk run counts, warm-ups included (the wu_ fields; 0 when there was no warm-up).
TOTAL_NON2XX=0 TOTAL_ERR_CONNECT=0 TOTAL_ERR_READ=0 TOTAL_ERR_WRITE=0 TOTAL_TIMEOUTS=0
TOTAL_STALLED=0 DISTURBED=''
for conns in $CONNS; do
    for t in $TARGETS; do
        for w in '' wu_; do
            TOTAL_NON2XX=$((TOTAL_NON2XX + R[$t,$conns,${w}NON2XX]))
            TOTAL_ERR_CONNECT=$((TOTAL_ERR_CONNECT + R[$t,$conns,${w}ERR_CONNECT]))
            TOTAL_ERR_READ=$((TOTAL_ERR_READ + R[$t,$conns,${w}ERR_READ]))
            TOTAL_ERR_WRITE=$((TOTAL_ERR_WRITE + R[$t,$conns,${w}ERR_WRITE]))
            TOTAL_TIMEOUTS=$((TOTAL_TIMEOUTS + R[$t,$conns,${w}TIMEOUTS]))
        done
        [[ $t != ceiling ]] && TOTAL_STALLED=$((TOTAL_STALLED + R[$t,$conns,stalled]))
        # Per point: ticks of the machine not in the servers, wrk or other processes = kernel
        # threads and whatever the kernel did not charge to a process.
        srv=$((R[$t,$conns,ticks_a] + R[$t,$conns,ticks_b] + R[$t,$conns,ticks_c]))
        kernel=$((R[$t,$conns,ticks_busy] - srv - R[$t,$conns,ticks_wrk] - R[$t,$conns,ticks_others]))
        ((kernel < 0)) && kernel=0
        R[$t,$conns,ticks_srv]=$srv R[$t,$conns,ticks_kernel]=$kernel
        # Disturbed: other processes used more than 5 % of the machine, or it was busy before.
        if ((100 * R[$t,$conns,ticks_others] > 5 * R[$t,$conns,ticks_total] || R[$t,$conns,quiet] >= 10)); then
            R[$t,$conns,mark]=' ‡'
            DISTURBED+="${DISTURBED:+, }${LABEL[$t]} c=$conns"
        else
            R[$t,$conns,mark]=''
        fi
    done
done

TOTAL_SOCKERR=$((TOTAL_ERR_CONNECT + TOTAL_ERR_READ + TOTAL_ERR_WRITE))

verdict() { if [[ $1 == 1 ]]; then echo "met"; else echo "**missed**"; fi; }
measured() { # measured N: was connection count N one of the points?
    local n
    for n in $CONNS; do [[ $n == "$1" ]] && return 0; done
    return 1
}
# compare VALUE OP LIMIT → 1 or 0; a value that is not a number (n/a, or -1: wrk printed no
# percentile) never meets a goal.
compare() {
    if [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; then calc "($1 $2 $3) ? 1 : 0"; else echo 0; fi
}

H=$GOAL_HI_CONNS L=$GOAL_LO_CONNS
SHARE_A='n/a' SHARE_B='n/a' P99_A='n/a' P99_B='n/a' P99_A1='n/a' RPS_A='—' RPS_B='—' RPS_C='—'
if measured "$H"; then
    SHARE_A=$(pct "${R[a,$H,RPS]}" "${R[ceiling,$H,RPS]}")
    SHARE_B=$(pct "${R[b,$H,RPS]}" "${R[ceiling,$H,RPS]}")
    P99_A=${R[a,$H,P99]} P99_B=${R[b,$H,P99]}
    RPS_A=${R[a,$H,RPS]} RPS_B=${R[b,$H,RPS]} RPS_C=${R[ceiling,$H,RPS]}
fi
measured "$L" && P99_A1=${R[a,$L,P99]}
# What the goal rows show as measured: the figure, or why there is none.
M_A="$SHARE_A % ($RPS_A vs $RPS_C req/s)" M_A_P99="$P99_A ms"
M_B="$SHARE_B % ($RPS_B vs $RPS_C req/s)" M_B_P99="$P99_B ms" M_A1_P99="$P99_A1 ms"
if ! measured "$H"; then
    M_A="not measured (BENCH_CONNS has no $H)" M_A_P99=$M_A M_B=$M_A M_B_P99=$M_A
fi
measured "$L" || M_A1_P99="not measured (BENCH_CONNS has no $L)"
G_A=$(compare "$SHARE_A" '>=' "$GOAL_A_PCT")
G_A_P99=$(compare "$P99_A" '<' "$GOAL_A_P99_MS")
G_B=$(compare "$SHARE_B" '>=' "$GOAL_B_PCT")
G_B_P99=$(compare "$P99_B" '<' "$GOAL_B_P99_MS")
G_A1_P99=$(compare "$P99_A1" '<=' "$GOAL_A1_P99_MS")
G_NON2XX=$(((TOTAL_NON2XX == 0 && EMPTY_RUNS == 0) ? 1 : 0))
G_ERRORS=$(((TOTAL_SOCKERR + TOTAL_TIMEOUTS == 0 && EMPTY_RUNS == 0) ? 1 : 0))
ERRORS_TEXT="$TOTAL_SOCKERR ($TOTAL_ERR_CONNECT connect, $TOTAL_ERR_READ read, $TOTAL_ERR_WRITE write) + $TOTAL_TIMEOUTS timeouts"
EMPTY_TEXT=$( ((EMPTY_RUNS == 0)) || echo "; $EMPTY_RUNS run(s) completed no request")
G_STALLED=$(((TOTAL_STALLED == 0) ? 1 : 0))
G_TW=$(((TW_PORTS < GOAL_TIME_WAIT) ? 1 : 0))
G_RSS_A=$(((HWM_A < GOAL_RSS_KB) ? 1 : 0))
G_RSS_B=$(((HWM_B < GOAL_RSS_KB) ? 1 : 0))

# ---------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
RUSTC=$(rustc --version 2>/dev/null || echo "rustc: not found")
WRK_VERSION=$( (wrk -v 2>&1 || true) | head -1 | awk '{ print $1, $2 }')
NOW=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain -- echo_core service_a service_b Cargo.lock 2>/dev/null | wc -l)
c=$MAX_CONNS # the connection count of the "what bounds" section: 64 if measured
measured "$H" && c=$H

{
    echo "# Benchmark results"
    echo
    echo "Generated by \`bench/run.sh\` on $NOW — do not edit by hand; run it again."
    echo
    echo "## Machine"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| CPUs (nproc) | $NPROC |"
    echo "| CPU model | $CPU_MODEL |"
    echo "| memory | $MEM_TOTAL |"
    echo "| kernel | $(uname -sr) |"
    echo "| rustc | $RUSTC |"
    echo "| load generator | $WRK_VERSION (Debian package) |"
    echo "| binaries | $TARGET_DIR/release |"
    echo "| commit | $GIT_REV$( ((GIT_DIRTY > 0)) && echo ", with uncommitted changes to the services") |"
    echo "| load average before the run | $LOAD_BEFORE |"
    echo "| date | $NOW |"
    echo
    echo "## Setup"
    echo
    echo "- Everything on loopback (127.0.0.1), on free ports, on the same $NPROC CPUs as wrk."
    echo "- \`service_a ${ARGS_A[*]:2}\`, \`service_b ${ARGS_B[*]:2} --service-a-url …\` (their effective config, from their first log line: A $(config_of "$WORK/service_a.log" max_connections); B $(config_of "$WORK/service_b.log" max_inflight max_connections))"
    echo "  (release build). **Logging is on**: one access line per request (B also logs each call to"
    echo "  A) to stdout, redirected to a file; the logs reached $(mb $((LOG_BYTES_A / 1024))) MB (A) and"
    echo "  $(mb $((LOG_BYTES_B / 1024))) MB (B)."
    echo "- Ceiling: \`bench/ceiling\` (std only): one thread per connection, keep-alive, TCP_NODELAY,"
    echo "  one fixed 16-byte JSON response per request head, no logging. It shows what this"
    echo "  machine's loopback, kernel and wrk allow; A and B are given as a share of it."
    echo "- wrk: \`wrk -t min(conns,2) -c conns -d ${DURATION}s --timeout $WRK_TIMEOUT --latency\`, keep-alive; before each"
    echo "  point a ${WARMUP}s warm-up at the same connection count (not timed; checked for non-2xx and"
    echo "  socket errors like the points, see the warm-up table)."
    echo "  URLs: \`/echo?msg=$MSG\`, \`/call-echo?msg=$MSG\`, \`/\` for the ceiling. Points run per connection"
    echo "  count in the order ceiling, A, B, each after waiting (at most ${QUIET_WAIT}s) for the machine to be"
    echo "  idle. Measuring took ${ELAPSED}s."
    echo "- Stalled connections: wrk does not report a connection the server never reads from (no"
    echo "  response means no latency sample and no timeout). In the middle of each point two snapshots"
    echo "  of the server's sockets (\`ss -tin\`), ${PROBE_INTERVAL}s apart, count the connections that received"
    echo "  nothing new while a request sat unread in their receive queue: served by nobody for the"
    echo "  whole interval. \"B 60/64, A 0/18\": 60 of B's 64 connections from wrk stalled, none of the 18"
    echo "  connections B held to A."
    echo
    echo "## Results"
    echo
    echo "| target | conns | req/s | p50 ms | p99 ms | % of ceiling | non-2xx | socket errors | timeouts | stalled conns |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for conns in $CONNS; do
        for t in $TARGETS; do
            share="—"
            [[ $t != ceiling ]] && share="$(pct "${R[$t,$conns,RPS]}" "${R[ceiling,$conns,RPS]}") %"
            echo "| ${LABEL[$t]}${R[$t,$conns,mark]} | $conns | ${R[$t,$conns,RPS]} | ${R[$t,$conns,P50]} | ${R[$t,$conns,P99]} | $share | ${R[$t,$conns,NON2XX]} | $((R[$t,$conns,ERR_CONNECT] + R[$t,$conns,ERR_READ] + R[$t,$conns,ERR_WRITE])) | ${R[$t,$conns,TIMEOUTS]} | ${R[$t,$conns,stalled_text]} |"
        done
    done
    echo
    if ((WARMUP > 0)); then
        echo "Warm-ups (${WARMUP}s before each point, fresh connections; checked like the points, not timed):"
        echo
        echo "| target | conns | requests | non-2xx | connect errors | read errors | write errors | timeouts |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for conns in $CONNS; do
            for t in $TARGETS; do
                echo "| ${LABEL[$t]} | $conns | ${R[$t,$conns,wu_TOTAL]} | ${R[$t,$conns,wu_NON2XX]} | ${R[$t,$conns,wu_ERR_CONNECT]} | ${R[$t,$conns,wu_ERR_READ]} | ${R[$t,$conns,wu_ERR_WRITE]} | ${R[$t,$conns,wu_TIMEOUTS]} |"
            done
        done
    else
        echo "No warm-ups (BENCH_WARMUP=0)."
    fi
    if [[ -n $DISTURBED ]]; then
        echo
        echo "‡ Disturbed point (other processes used more than 5 % of the machine during it, or it was"
        echo "still busy when the point started): $DISTURBED. Compare those with care, or run again."
    fi
    echo
    echo "## CPU per request"
    echo
    echo "CPU time during each measured point divided by the requests wrk completed, in µs: servers"
    echo "from \`/proc/PID/stat\`; wrk from this shell's children times; other processes from"
    echo "\`/proc/*/stat\` (every other user-space process, with the children it reaped); \"kernel\" is the"
    echo "rest of the machine's busy time from \`/proc/stat\` (kernel threads, work not charged to a"
    echo "process). The irq+softirq column (loopback TCP delivery is largely softirq) is already included"
    echo "in the columns before it: the kernel charges those ticks to whatever they interrupted."
    echo
    echo "| target | conns | machine busy | server(s) | wrk | other processes | kernel | total | of which irq+softirq |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|---:|"
    for conns in $CONNS; do
        for t in $TARGETS; do
            n=${R[$t,$conns,TOTAL]}
            case $t in
                ceiling) srv="ceiling $(us_per_req "${R[$t,$conns,ticks_c]}" "$n")" ;;
                a) srv="A $(us_per_req "${R[$t,$conns,ticks_a]}" "$n")" ;;
                b) srv="B $(us_per_req "${R[$t,$conns,ticks_b]}" "$n") + A $(us_per_req "${R[$t,$conns,ticks_a]}" "$n")" ;;
            esac
            echo "| ${LABEL[$t]}${R[$t,$conns,mark]} | $conns | $(pct "${R[$t,$conns,ticks_busy]}" "${R[$t,$conns,ticks_total]}") % | $srv | $(us_per_req "${R[$t,$conns,ticks_wrk]}" "$n") | $(us_per_req "${R[$t,$conns,ticks_others]}" "$n") | $(us_per_req "${R[$t,$conns,ticks_kernel]}" "$n") | $(us_per_req "${R[$t,$conns,ticks_busy]}" "$n") | $(us_per_req "${R[$t,$conns,ticks_irq]}" "$n") |"
        done
    done
    echo
    echo "## Memory, sockets, logs (after the last point, services still running)"
    echo
    echo "| | service_a | service_b | ceiling |"
    echo "|---|---:|---:|---:|"
    echo "| peak RSS (VmHWM) | $(mb "$HWM_A") MB | $(mb "$HWM_B") MB | $(mb "$HWM_C") MB |"
    echo "| RSS now (VmRSS) | $(mb "$RSS_A") MB | $(mb "$RSS_B") MB | |"
    echo "| threads now | $THR_A | $THR_B | $THR_C |"
    echo "| TIME_WAIT, local port = the server's (server closed first) | $TW_BY_A | $TW_BY_B | $TW_BY_C |"
    echo "| TIME_WAIT, remote port = the server's (client closed first) | $TW_TO_A | $TW_TO_B | $TW_TO_C |"
    echo
    echo "TIME_WAIT sockets: **$TW_PORTS on the ports involved** (A, B and ceiling ports, either end; the"
    echo "goal is judged on this figure), $TW_ALL on the whole machine ($TW_BEFORE before the run; TIME_WAIT"
    echo "lasts 60 s on Linux, so the machine figure includes whatever else ran in the last minute)."
    echo "Connections established to A at the end (B's idle pool): $EST_A."
    echo
    echo "Access logs: A logged $LOG_A_200 \`GET /echo 200\` for $((SENT_A + LOG_B_CALLS)) expected"
    echo "($SENT_A from wrk and the check, warm-ups included, + $LOG_B_CALLS calls from B);"
    echo "B logged $LOG_B_200 \`GET /call-echo 200\` for $SENT_B sent by wrk and the check. A few more in the"
    echo "logs than counted by wrk is normal (answered after wrk stopped counting)."
    echo "Non-200 access lines: A $LOG_A_OTHER, B $LOG_B_OTHER; B's failed calls to A: $LOG_B_FAILED${FAILED_KINDS:+ ($FAILED_KINDS)}."
    echo
    echo "## Goals"
    echo
    echo "| goal | measured | |"
    echo "|---|---|---|"
    echo "| A /echo ≥ ${GOAL_A_PCT} % of the ceiling at $H connections | $M_A | $(verdict "$G_A") |"
    echo "| A /echo p99 < ${GOAL_A_P99_MS} ms at $H connections | $M_A_P99 | $(verdict "$G_A_P99") |"
    echo "| B→A chain (/call-echo) ≥ ${GOAL_B_PCT} % of the ceiling at $H connections | $M_B | $(verdict "$G_B") |"
    echo "| B→A chain (/call-echo) p99 < ${GOAL_B_P99_MS} ms at $H connections | $M_B_P99 | $(verdict "$G_B_P99") |"
    echo "| A /echo p99 ≤ ${GOAL_A1_P99_MS} ms at $L connection | $M_A1_P99 | $(verdict "$G_A1_P99") |"
    echo "| zero non-2xx in every wrk run ($WRK_RUNS runs, warm-ups included) | $TOTAL_NON2XX$EMPTY_TEXT | $(verdict "$G_NON2XX") |"
    echo "| zero socket errors (connect, read, write, timeout) in every wrk run ($WRK_RUNS runs, warm-ups included) | $ERRORS_TEXT$EMPTY_TEXT | $(verdict "$G_ERRORS") |"
    echo "| service_a peak RSS under 32 MB | $(mb "$HWM_A") MB | $(verdict "$G_RSS_A") |"
    echo "| service_b peak RSS under 32 MB | $(mb "$HWM_B") MB | $(verdict "$G_RSS_B") |"
    echo "| fewer than $GOAL_TIME_WAIT TIME_WAIT sockets after the run (ports involved) | $TW_PORTS | $(verdict "$G_TW") |"
    echo "| no stalled connection to A or B (a request nobody reads is worse than a 5xx) | $TOTAL_STALLED | $(verdict "$G_STALLED") |"
    echo
    echo "All at both services' defaults with logging on, against the ceiling measured in this run."
    echo
    echo "## What bounds the figures (this run, $c connections)"
    echo
    echo "Cost of a request = the servers + wrk + the kernel; other processes are left out (they"
    echo "are a disturbance, not part of serving the request)."
    echo
    for t in $TARGETS; do
        n=${R[$t,$c,TOTAL]}
        cost=$((R[$t,$c,ticks_busy] - R[$t,$c,ticks_others]))
        cost_us=$(us_per_req "$cost" "$n")
        cap=$(calc "($cost_us > 0) ? sprintf(\"%.0f\", $NPROC * 1000000 / $cost_us) : \"n/a\"")
        busy_pct=$(pct "${R[$t,$c,ticks_busy]}" "${R[$t,$c,ticks_total]}")
        if [[ $(calc "($busy_pct >= 90) ? 1 : 0") == 1 ]]; then
            bound="CPU-bound"
        else
            bound="**not CPU-bound**: the CPUs idled, so requests waited on something else"
        fi
        echo "- ${LABEL[$t]}: machine $busy_pct % busy, $bound. A request costs $cost_us µs of CPU"
        echo "  ($(us_per_req "${R[$t,$c,ticks_srv]}" "$n") in the server(s), $(us_per_req "${R[$t,$c,ticks_wrk]}" "$n") in wrk, $(us_per_req "${R[$t,$c,ticks_kernel]}" "$n") in the kernel) → $NPROC CPUs allow about $cap req/s;"
        echo "  measured ${R[$t,$c,RPS]}.${R[$t,$c,stalled_text]:+ Stalled connections: ${R[$t,$c,stalled_text]}.}"
    done
    echo
    # What the servers' own CPU per request would have to be for the goals, wrk and kernel per
    # request as measured in this run.
    ceil_us=$(us_per_req $((R[ceiling,$c,ticks_busy] - R[ceiling,$c,ticks_others])) "${R[ceiling,$c,TOTAL]}")
    for t in a b; do
        n=${R[$t,$c,TOTAL]}
        goal=$GOAL_A_PCT
        [[ $t == b ]] && goal=$GOAL_B_PCT
        srv_us=$(us_per_req "${R[$t,$c,ticks_srv]}" "$n")
        rest_us=$(us_per_req $((R[$t,$c,ticks_wrk] + R[$t,$c,ticks_kernel])) "$n")
        need=$(calc "sprintf(\"%.1f\", $ceil_us * 100 / $goal - $rest_us)")
        echo "- For ${LABEL[$t]} to reach $goal % of the ceiling while CPU-bound, a request may cost at most"
        echo "  $ceil_us × 100 / $goal µs; with wrk and the kernel costing $rest_us µs of it as measured, the"
        echo "  server side must drop from $srv_us to at most $need µs per request."
    done
    echo
    echo "When the machine is near 100 % busy the share of the ceiling is the ratio of total CPU per"
    echo "request (ceiling total ÷ service total); when it is not, the figures measure waiting, and the"
    echo "stalled-connection column says whether connections sat unserved."
    if [[ -f $ROOT/bench/FINDINGS.md ]]; then
        echo
        cat "$ROOT/bench/FINDINGS.md"
    fi
} >"$OUT"

# ---------------------------------------------------------------------------------------
# Summary on screen
# ---------------------------------------------------------------------------------------
show() { # show MET TEXT
    if [[ $1 == 1 ]]; then
        printf '  %sMET%s     %s\n' "$GREEN" "$RESET" "$2"
    else
        printf '  %sMISSED%s  %s\n' "$RED" "$RESET" "$2"
    fi
}
say "goals"
show "$G_A" "A at $H conns: $M_A of the ceiling (goal ≥ $GOAL_A_PCT %)"
show "$G_A_P99" "A at $H conns: p99 $M_A_P99 (goal < $GOAL_A_P99_MS ms)"
show "$G_B" "B→A at $H conns: $M_B of the ceiling (goal ≥ $GOAL_B_PCT %)"
show "$G_B_P99" "B→A at $H conns: p99 $M_B_P99 (goal < $GOAL_B_P99_MS ms)"
show "$G_A1_P99" "A at $L conn: p99 $M_A1_P99 (goal ≤ $GOAL_A1_P99_MS ms)"
show "$G_NON2XX" "non-2xx: $TOTAL_NON2XX in $WRK_RUNS wrk runs, warm-ups included (goal 0)$EMPTY_TEXT"
show "$G_ERRORS" "socket errors: $ERRORS_TEXT in $WRK_RUNS wrk runs, warm-ups included (goal 0)$EMPTY_TEXT"
show "$G_RSS_A" "service_a peak RSS $(mb "$HWM_A") MB (goal < 32 MB)"
show "$G_RSS_B" "service_b peak RSS $(mb "$HWM_B") MB (goal < 32 MB)"
show "$G_TW" "TIME_WAIT on the ports involved: $TW_PORTS (goal < $GOAL_TIME_WAIT; whole machine: $TW_ALL)"
show "$G_STALLED" "stalled connections to A or B: $TOTAL_STALLED (goal 0)"
[[ -n $DISTURBED ]] && printf '  %snote%s    disturbed by other processes: %s\n' "$RED" "$RESET" "$DISTURBED"
say "results written to $OUT"
exit 0
