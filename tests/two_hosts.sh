#!/usr/bin/env bash
# Two hosts: A and B in two network namespaces joined by a veth pair, each with its own
# address. Checks a call works, takes A's side of the link down (a silent partition: B must
# answer 503 `timeout` within the deadline plus 0.3 s while /health stays 200), brings it
# back up (200 again within the breaker cooldown plus 1 s), and prints what it measured.
# Needs root and iproute2; prints SKIP and exits 0 where namespaces cannot be created.
# Runs the debug build (built first, if needed) or the binaries in ECHO_BIN_DIR.
# Traffic stays inside the two namespaces (link-local 169.254.77.0/30).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"

TIMEOUT_MS=1000
COOLDOWN_MS=2000
ns_a="echo-a-$$" ns_b="echo-b-$$" if_a="ea$$" if_b="eb$$"
ip_a=169.254.77.1 ip_b=169.254.77.2
logs=$(mktemp -d)

skip_test() { echo "SKIP: two-host test: $*"; exit 0; }

[ "$(id -u)" = 0 ] || skip_test "needs root"
command -v ip >/dev/null || skip_test "needs iproute2 (ip)"
command -v curl >/dev/null || skip_test "needs curl"
ip netns add "$ns_a" 2>/dev/null || skip_test "network namespaces cannot be created here"

cleanup() {
  stop_all
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

ip netns add "$ns_b"
ip link add "$if_a" type veth peer name "$if_b"
ip link set "$if_a" netns "$ns_a"
ip link set "$if_b" netns "$ns_b"
ip -n "$ns_a" addr add "$ip_a/30" dev "$if_a"
ip -n "$ns_b" addr add "$ip_b/30" dev "$if_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$if_a" up
ip -n "$ns_b" link set "$if_b" up
# A permanent neighbour entry: without it B's kernel would, once ARP for A fails, report
# "No route to host" at once; with it, packets to A just vanish, as in a real partition.
mac_a=$(ip -n "$ns_a" -o link show "$if_a" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
ip -n "$ns_b" neigh replace "$ip_a" lladdr "$mac_a" dev "$if_b" nud permanent

build_services --quiet || { echo "two-host test: $LIB_ERROR"; exit 1; }
# start LOG NAMESPACE COMMAND...: start_service in that namespace, or end the test.
start() {
  local log=$1 ns=$2
  shift 2
  start_service "$log" ip netns exec "$ns" "$@" || { echo "two-host test: ${1##*/} $LIB_ERROR"; exit 1; }
}
start "$logs/a.log" "$ns_a" "$A_BIN" --listen "$ip_a:8080" --log-level info
start "$logs/b.log" "$ns_b" "$B_BIN" --listen "$ip_b:8081" --service-a-url "http://$ip_a:8080" \
  --timeout-ms "$TIMEOUT_MS" --breaker-cooldown-ms "$COOLDOWN_MS" --log-level info

# call PATH: prints "STATUS SECONDS BODY" for a request from inside B's namespace.
call() {
  ip netns exec "$ns_b" curl -s -m 10 -o "$logs/body" -w '%{http_code} %{time_total}' "http://$ip_b:8081$1" || true
  printf ' %s\n' "$(cat "$logs/body" 2>/dev/null)"
}
within() { python3 -c "import sys; sys.exit(0 if float('$1') <= float('$2') else 1)"; }

read -r status secs body <<<"$(call "/call-echo?msg=across")"
if [ "$status" = 200 ] && [[ $body == *'"echo":"across"'* ]]; then pass "call across the link: 200 in ${secs}s"; else fail "call across the link: $status $body"; fi

echo "-- partition: $if_a down in A's namespace"
ip -n "$ns_a" link set "$if_a" down
limit=$(python3 -c "print($TIMEOUT_MS/1000 + 0.3)")
for i in 1 2 3 4 5; do
  read -r status secs body <<<"$(call "/call-echo?msg=partitioned$i")"
  if [ "$status" = 503 ] && [[ $body == *'"kind":"timeout"'* ]] && within "$secs" "$limit"; then
    pass "partitioned call $i: 503 timeout in ${secs}s (limit ${limit}s)"
  else
    fail "partitioned call $i: $status in ${secs}s: $body"
  fi
  read -r status secs _ <<<"$(call /health)"
  if [ "$status" = 200 ]; then pass "B /health during the partition: 200 in ${secs}s"; else fail "B /health during the partition: $status"; fi
done
read -r status secs body <<<"$(call "/call-echo?msg=open")"
if [ "$status" = 503 ] && [[ $body == *'"kind":"circuit_open"'* ]] && within "$secs" 0.2; then
  pass "after 5 failures the breaker is open: 503 circuit_open in ${secs}s"
else
  fail "breaker not open after 5 failures: $status in ${secs}s: $body"
fi
read -r status secs body <<<"$(call /ready)"
# B's readiness does not depend on A: it still serves (its 503s), so it stays ready.
if [ "$status" = 200 ]; then pass "/ready during the partition: 200 $body"; else fail "/ready during the partition: $status $body"; fi

echo "-- healed: $if_a up again"
ip -n "$ns_a" link set "$if_a" up
start=$(date +%s.%N)
recovered=""
while within "$(python3 -c "print($(date +%s.%N) - $start)")" "$(python3 -c "print($COOLDOWN_MS/1000 + 3)")"; do
  read -r status secs body <<<"$(call "/call-echo?msg=healed")"
  if [ "$status" = 200 ]; then recovered=$(python3 -c "print(round($(date +%s.%N) - $start, 2))"); break; fi
  sleep 0.1
done
limit=$(python3 -c "print($COOLDOWN_MS/1000 + 1)")
if [ -n "$recovered" ] && within "$recovered" "$limit"; then
  pass "200 again ${recovered}s after the link came up (limit ${limit}s)"
else
  fail "not 200 within ${limit}s after the link came up (${recovered:-never})"
fi

if [ "$FAILED" != 0 ]; then
  echo "--- B's log"; tail -n 30 "$logs/b.log"
  echo "two-host test: FAILED"; exit 1
fi
echo "two-host test: all passed"
