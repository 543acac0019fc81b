#!/usr/bin/env python3
"""A TCP proxy that forwards every chunk, either way, DELAY seconds after it arrived (in
order): a replica slow on its network, for tests/compose.sh. Unlike A's own --delay-ms, the
replica behind it cannot refuse work it cannot finish in time.

    delay_proxy.py --listen 0.0.0.0:8080 --upstream 172.18.0.5:8080 --delay 0.3

compose.sh runs it inside a container's network namespace (nsenter -n), so that B finds it
under the alias service-a. Ends on SIGTERM."""
import argparse
import queue
import socket
import threading
import time


def pipe(src, dst, delay):
    """Copies src to dst, each chunk `delay` after it was read; src's end ends dst's writes."""
    chunks = queue.Queue()

    def reader():
        while True:
            try:
                data = src.recv(16384)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    def writer():
        while True:
            due, data = chunks.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay", type=float, default=0.3)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    server = socket.create_server((host, int(port)), backlog=1024)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((up_host, int(up_port)), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe(client, upstream, args.delay)
        pipe(upstream, client, args.delay)


if __name__ == "__main__":
    main()
