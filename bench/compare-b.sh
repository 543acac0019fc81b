#!/usr/bin/env bash
# Two builds of Service B against one Service A, in one run:   bench/compare-b.sh OLD_B NEW_B
#
# Made to check that a change to B (the balancer over replicas) costs the single-replica
# chain no more than 5 %: both B binaries call the same A (an IP literal, one replica), and
# wrk drives them in alternating rounds at 64 connections, so drift of a shared machine hits
# both alike. Prints each round and the median req/s and p99 of each, and their ratio.
#
# Environment: CMP_ROUNDS (default 5), CMP_DURATION seconds per round (default 5),
# CMP_CONNS (default 64), CMP_A the service_a binary (default target/release/service_a).
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -eq 2 && -x $1 && -x $2 ]] || { echo "usage: bench/compare-b.sh OLD_SERVICE_B NEW_SERVICE_B" >&2; exit 2; }
OLD_B=$1 NEW_B=$2
ROUNDS=${CMP_ROUNDS:-5} DURATION=${CMP_DURATION:-5} CONNS=${CMP_CONNS:-64}
BIN_A=${CMP_A:-target/release/service_a}
[[ -x $BIN_A ]] || { echo "compare-b: $BIN_A is missing (cargo build --release)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "compare-b: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    ((${#PIDS[@]})) && kill "${PIDS[@]}" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # start LOG COMMAND... → URL on stdout once the service says where it listens
    local log=$1 i url=''
    shift
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    for ((i = 0; i < 100; i++)); do
        url=$(grep -o -m1 'listening on http://[0-9.]*:[0-9]*' "$log" | sed 's/^listening on //') || true
        [[ -n $url ]] && { URL=$url; return; }
        sleep 0.1
    done
    echo "compare-b: $1 did not start: $(tail -3 "$log")" >&2
    exit 1
}

start "$WORK/a.log" "$BIN_A" --listen 127.0.0.1:0 --log-level info
URL_A=$URL
start "$WORK/old.log" "$OLD_B" --listen 127.0.0.1:0 --log-level info --timeout-ms 2000 --service-a-url "$URL_A"
URL_OLD=$URL
start "$WORK/new.log" "$NEW_B" --listen 127.0.0.1:0 --log-level info --timeout-ms 2000 --service-a-url "$URL_A"
URL_NEW=$URL

run() { # run URL → "REQ_PER_S P99_MS NON2XX ERRORS"
    local threads=$((CONNS < 2 ? CONNS : 2))
    wrk -t"$threads" -c"$CONNS" -d"${DURATION}s" --timeout 2s --latency "$1/call-echo?msg=hello" |
        awk '/Requests\/sec:/ { r = $2 }
             /^ *99% / { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else sub(/ms$/, "", v); p = v }
             /Non-2xx/ { n = $NF }
             /Socket errors:/ { gsub(/,/, ""); e = $4 + $6 + $8 + $10 }
             END { printf "%.0f %.3f %d %d\n", r, p, n, e }'
}

echo "A $URL_A; old B $URL_OLD ($OLD_B); new B $URL_NEW ($NEW_B)"
echo "$ROUNDS rounds of ${DURATION}s each at $CONNS connections, old and new in turn (1 s warm-up each)"
for ((i = 1; i <= ROUNDS; i++)); do
    for which in old new; do
        url=$URL_OLD
        [[ $which == new ]] && url=$URL_NEW
        DURATION=1 run "$url" >/dev/null
        read -r rps p99 non2xx errors < <(run "$url")
        printf '  round %d  %-3s  %8s req/s  p99 %7s ms  non-2xx %s  socket errors %s\n' "$i" "$which" "$rps" "$p99" "$non2xx" "$errors"
        echo "$rps $p99" >>"$WORK/$which"
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
OLD_RPS=$(cut -d' ' -f1 "$WORK/old" | median) NEW_RPS=$(cut -d' ' -f1 "$WORK/new" | median)
OLD_P99=$(cut -d' ' -f2 "$WORK/old" | median) NEW_P99=$(cut -d' ' -f2 "$WORK/new" | median)
echo "median: old $OLD_RPS req/s (p99 $OLD_P99 ms), new $NEW_RPS req/s (p99 $NEW_P99 ms)"
awk -v o="$OLD_RPS" -v n="$NEW_RPS" 'BEGIN { printf "new / old = %.1f %%\n", 100 * n / o }'
