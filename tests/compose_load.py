#!/usr/bin/env python3
"""Load for tests/compose.sh: N concurrent clients calling B's GET /call-echo on 127.0.0.1.

Each client is a process of its own (no GIL between clients, so the latencies are B's and
not the interpreter's) with one keep-alive connection (http.client; a new one after an
answer with `Connection: close` or an error). Every call is checked against the contract:
  ok         200 and the body is exactly {"msg": M, "echo_response": {"echo": M}}
  c503       503 and the body is exactly {"error": "Service A unavailable", "details": str,
             "kind": one of B's kinds}  (a failed call, but within the contract)
  BAD        anything else: another status or body, a reset, a client timeout (5 s)
and a call slower than --limit-ms (2200) is a violation too, whatever it answered.
Bounded: stops by itself after --duration seconds, after --count calls in all, when the
--stop-file appears, or when this process is killed (each client stops after its call in
flight), whichever comes first.

Writes one line per call to --out, ordered by start time:
  START_EPOCH CLIENT STATUS MS VERDICT REQUEST_ID [DETAIL]
and prints one summary line (key=value) on stdout:
  calls= ok= failed= c503= violations= p50= p99= max= over1s=
failed counts every call that was not ok (c503 included); violations counts BAD calls and
calls over the limit.
"""
import argparse
import http.client
import json
import math
import os
import random
import sys
import time
import urllib.parse

KINDS = {"connect", "timeout", "status", "bad_response", "overloaded", "circuit_open"}


def verdict(status, body, msg):
    try:
        doc = json.loads(body)
    except ValueError:
        return "BAD", "not JSON: " + body[:200]
    if status == 200:
        if doc == {"msg": msg, "echo_response": {"echo": msg}}:
            return "ok", ""
        return "BAD", "200 with a wrong body: " + body[:300]
    if status == 503:
        if (isinstance(doc, dict) and set(doc) == {"error", "details", "kind"}
                and doc["error"] == "Service A unavailable"
                and isinstance(doc["details"], str) and doc["details"]
                and doc["kind"] in KINDS):
            return "c503", doc["kind"] + ": " + doc["details"]
        return "BAD", "503 outside the contract: " + body[:300]
    return "BAD", f"status {status}: " + body[:300]


def client(i, args, path, end, per_client, parent):
    rng = random.Random(f"{args.name}-{i}")
    conn = None
    n = 0
    with open(path, "w") as log:
        while time.time() < end and (per_client == 0 or n < per_client):
            if args.stop_file and os.path.exists(args.stop_file):
                break
            if os.getppid() != parent:  # the parent was killed: stop too
                break
            n += 1
            rid = f"{args.name}-{i}-{n}"
            # A message that needs encoding both ways: a space, '&', '=', '+' and non-ASCII.
            msg = f"{rid} é&=+{rng.randrange(1000)}"
            target = "/call-echo?msg=" + urllib.parse.quote(msg, safe="")
            t0 = time.time()
            m0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
                conn.request("GET", target, headers={"X-Request-Id": rid})
                resp = conn.getresponse()
                status, body = resp.status, resp.read().decode("utf-8", "replace")
                if resp.will_close:
                    conn.close()
                    conn = None
                v, detail = verdict(status, body, msg)
            except Exception as e:  # refused, reset, timed out: a violation
                status, v, detail = 0, "BAD", f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            ms = (time.monotonic() - m0) * 1000
            line = f"{t0:.3f} {i} {status} {ms:.1f} {v} {rid}"
            if detail:
                line += " " + json.dumps(detail)
            log.write(line + "\n")
            if args.pause:
                time.sleep(args.pause)
    if conn is not None:
        conn.close()


def pct(sorted_ms, p):
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(p / 100 * len(sorted_ms)) - 1))]


def summarize(lines, limit_ms):
    ms = []
    ok = c503 = bad = over_limit = over1s = 0
    for line in lines:
        f = line.split(" ", 6)
        t = float(f[3])
        ms.append(t)
        ok += f[4] == "ok"
        c503 += f[4] == "c503"
        bad += f[4] == "BAD"
        over_limit += f[4] != "BAD" and t > limit_ms
        over1s += t > 1000
    ms.sort()
    return (f"calls={len(ms)} ok={ok} failed={len(ms) - ok} c503={c503} violations={bad + over_limit} "
            f"p50={pct(ms, 50):.1f} p99={pct(ms, 99):.1f} max={(ms[-1] if ms else 0):.1f} over1s={over1s}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--duration", type=float, default=60, help="seconds, at most")
    ap.add_argument("--count", type=int, default=0, help="calls in all, at most (0: no bound)")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds each client waits between calls")
    ap.add_argument("--stop-file", default="")
    ap.add_argument("--limit-ms", type=float, default=2200)
    ap.add_argument("--name", default="load")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.duration <= 900:
        ap.error("1..64 clients, 0..900 s")
    end = time.time() + args.duration
    per_client = math.ceil(args.count / args.clients) if args.count else 0
    pids = []
    parent = os.getpid()
    for i in range(args.clients):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                client(i, args, f"{args.out}.{i}", end, per_client, parent)
            except BaseException as e:
                print(f"compose_load: client {i}: {e}", file=sys.stderr)
                code = 1
            os._exit(code)
        pids.append(pid)
    code = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        code |= os.waitstatus_to_exitcode(status) != 0
    lines = []
    for i in range(args.clients):
        part = f"{args.out}.{i}"
        if os.path.exists(part):
            with open(part) as f:
                lines += [l.rstrip("\n") for l in f if l.strip()]
            os.remove(part)
    lines.sort(key=lambda l: float(l.split(" ", 1)[0]))
    with open(args.out, "w") as f:
        f.writelines(l + "\n" for l in lines)
    print(summarize(lines, args.limit_ms))
    sys.exit(1 if code else 0)


if __name__ == "__main__":
    main()
