#!/usr/bin/env python3
"""Slow and idle connections against a real HTTP listener (issue 12 item 3).

Opens IDLE TCP connections that never send a byte and HALF that send half a request header,
then times REQUESTS ordinary GETs (each on a new connection, as OCSP clients do) while they are
open, and finally checks that the listener closed the slow ones after its header-read timeout.

Passes when: every GET answers 200, their p99 is under --p99-limit seconds, and (with
--expect-closed-after S) every slow connection is closed by the server within S seconds of being
opened. Before the listeners had timeouts, the slow connections stayed open for ever and, by
the thousands, exhausted the responder's file descriptors.

Used by ca-frontend/e2e/clients.sh (2,000 + 50 connections, CI) and bench/slow-connections/run.sh
(the full figure, 20,000). Prints one summary line; exits 1 on a failed check.
"""

import argparse
import http.client
import resource
import socket
import sys
import time


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_slow(host, port, count, payload):
    socks = []
    for _ in range(count):
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError as e:
            print(f"connect failed after {len(socks)} connections: {e}", file=sys.stderr)
            break
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass
        socks.append(s)
    return socks


def is_closed(s):
    """True once the server closed (EOF or reset); a response (e.g. 408) followed by EOF counts."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def timed_gets(host, port, path, count, interval=0):
    latencies, failures = [], []
    for _ in range(count):
        time.sleep(interval)
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                failures.append(f"HTTP {resp.status}")
        except OSError as e:
            failures.append(str(e))
        latencies.append(time.monotonic() - started)
    latencies.sort()
    return latencies, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="host:port")
    ap.add_argument("--path", default="/", help="path of the ordinary GET")
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--half", type=int, default=50)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--p99-limit", type=float, default=1.0)
    ap.add_argument("--hold", type=float, default=0,
                    help="seconds to keep the slow connections before the GETs")
    ap.add_argument("--reopen", action="store_true",
                    help="while holding, reopen those the server closes (a persistent attacker; "
                         "from one source address this soon runs out of local ports)")
    ap.add_argument("--interval", type=float, default=0, help="seconds between the GETs")
    ap.add_argument("--expect-closed-after", type=float, default=None,
                    help="seconds after which every slow connection must be closed")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    limit = raise_fd_limit(args.idle + args.half + 256)
    if limit < args.idle + args.half + 64:
        print(f"FAIL: file limit {limit} is too low for {args.idle + args.half} connections")
        return 1

    opened = time.monotonic()
    idle = open_slow(host, port, args.idle, b"")
    half = open_slow(host, port, args.half, f"GET {args.path} HTTP/1.1\r\nHost: x\r\nUser-Ag".encode())
    all_open = time.monotonic()
    opened_in = all_open - opened
    hold_until = time.monotonic() + args.hold
    while time.monotonic() < hold_until and not args.reopen:
        time.sleep(0.1)
    while time.monotonic() < hold_until:
        lost_idle = [s for s in idle if is_closed(s)]
        lost_half = [s for s in half if is_closed(s)]
        idle = [s for s in idle if s not in lost_idle] + open_slow(host, port, len(lost_idle), b"")
        half = [s for s in half if s not in lost_half] + open_slow(
            host, port, len(lost_half), f"GET {args.path} HTTP/1.1\r\nHost: x\r\n".encode())
        time.sleep(0.5)
    latencies, failures = timed_gets(host, port, args.path, args.requests, args.interval)
    if not latencies:
        latencies = [0.0]
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    problems = []
    if len(idle) < args.idle or len(half) < args.half:
        problems.append(f"opened only {len(idle)} idle and {len(half)} half-header connections")
    if failures:
        problems.append(f"{len(failures)} of {args.requests} GETs failed (first: {failures[0]})")
    if p99 > args.p99_limit:
        problems.append(f"p99 {p99:.3f} s > {args.p99_limit} s")

    still_open = None
    if args.expect_closed_after is not None:
        # From when the last one was opened: a busy server takes a while to accept thousands.
        deadline = all_open + args.expect_closed_after
        slow = idle + half
        while True:
            slow = [s for s in slow if not is_closed(s)]
            if not slow or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        still_open = len(slow)
        if still_open:
            problems.append(f"{still_open} of {len(idle) + len(half)} slow connections still open "
                            f"{args.expect_closed_after:.0f} s after the last was opened")
    for s in idle + half:
        s.close()
    closed = "" if still_open is None else f", slow ones closed by the server: {len(idle) + len(half) - still_open}"
    print(f"{args.target}: {len(idle)} idle + {len(half)} half-header connections (opened in "
          f"{opened_in:.1f} s); {args.requests} GETs p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
          f"{closed}")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
