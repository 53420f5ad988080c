"""The live-stream load client: thousands of raw SSE subscribers in one process of their own.

`scripts.bench.streams` starts one or more of these. Each opens `--count` connections to one
match's stream and reports, as JSON lines on stdout:

1. `{"phase": "connected", ...}` once every subscriber has its first `metrics` frame or has failed
   (failures by reason, connect-to-first-frame times);
2. `{"phase": "delivered", ...}` once every subscriber saw an update with at least `--wanted`
   events, or when a line arrives on stdin: when each one saw it (CLOCK_MONOTONIC, which every
   process on the machine shares, so the parent subtracts the moment it posted the goal);
3. `{"phase": "frames", ...}` when the next line arrives: the metrics frames received in all and
   the streams still open (the parent measures its producer in between, while updates fan out).

Why it is built this way:
- a process holds at most 20,000 open files here (the hard limit, which the soft one is raised
  to), so the client never shares a process with the server;
- each socket is bound to its own 127.0.0.N source address (IP_BIND_ADDRESS_NO_PORT leaves the
  port to connect()), so the ephemeral port range (28,231 ports) limits connections per address,
  not in all;
- at most `--in-flight` subscribers are between connect() and their first frame at once, like
  fans arriving over seconds rather than in one SYN burst (see `scripts.bench.streams`);
- asyncio Protocols on uvloop with a byte search per line, not StreamReader and a regex: 18,000
  streams receiving one frame each must cost the client less than the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import cast

from fanfinity.__main__ import raise_open_files_limit
from scripts.helpers import percentile

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
TOTAL = b'"totalEvents":'


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str
    wanted: int


class Countdown:
    """Set once `count_down` has been called `remaining` times."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.done = asyncio.Event()
        if remaining <= 0:
            self.done.set()

    def count_down(self, by: int = 1) -> None:
        self.remaining -= by
        if self.remaining <= 0:
            self.done.set()


class SseSubscriber(asyncio.Protocol):
    """One stream: remembers when the first frame, and the wanted update, arrived."""

    def __init__(self, request: bytes, wanted: int, delivered: Countdown) -> None:
        self.request = request
        self.wanted = wanted
        self.delivered = delivered
        self.buffer = b""
        self.status_checked = False
        self.first_at: float | None = None
        self.update_at: float | None = None
        self.failure: str | None = None
        self.first_frame = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.frames = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.status_checked:
            if b"\r\n" not in self.buffer:
                return
            status_line = self.buffer.split(b"\r\n", 1)[0]
            self.status_checked = True
            if b" 200 " not in status_line + b" ":
                self.fail(f"HTTP {status_line[9:12].decode(errors='replace')}")
                return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            start = line.find(TOTAL)
            if start < 0 or not line.startswith(b"data: "):
                continue
            digits = line[start + len(TOTAL) :].split(b",", 1)[0].split(b"}", 1)[0]
            total = int(digits)
            self.frames += 1
            if self.first_at is None:
                self.first_at = now
                if not self.first_frame.done():
                    self.first_frame.set_result(None)
            if total >= self.wanted and self.update_at is None:
                self.update_at = now
                self.delivered.count_down()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.first_at is None:
            self.fail("closed before the first frame" if exc is None else type(exc).__name__)

    def fail(self, reason: str) -> None:
        if self.failure is None and self.first_at is None:
            self.failure = reason
        if not self.first_frame.done():
            self.first_frame.set_result(None)
        if self.transport is not None:
            self.transport.close()


def error_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


async def subscribe(
    target: Target,
    source: str,
    timeout_s: float,
    slots: asyncio.Semaphore,
    delivered: Countdown,
) -> tuple[SseSubscriber | None, str | None, float]:
    """Connect from `source` and wait for the first frame; (protocol, failure, seconds taken)."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    async with slots:
        started = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (target.host, target.port)), timeout_s)
            _, protocol = await loop.create_connection(
                lambda: SseSubscriber(request, target.wanted, delivered), sock=sock
            )
        except TimeoutError:
            sock.close()
            return None, "connect timeout", time.monotonic() - started
        except OSError as exc:
            sock.close()
            return None, f"connect {error_name(exc)}", time.monotonic() - started
        remaining = max(0.1, timeout_s - (time.monotonic() - started))
        try:
            await asyncio.wait_for(asyncio.shield(protocol.first_frame), remaining)
        except TimeoutError:
            protocol.fail("no first frame in time")
        return protocol, protocol.failure, time.monotonic() - started


async def run(args: argparse.Namespace) -> None:
    target = Target(args.host, args.port, args.path, args.wanted)
    sources = [f"127.0.0.{args.first_address + i}" for i in range(args.addresses)]
    slots = asyncio.Semaphore(args.in_flight)
    delivered = Countdown(args.count)
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            subscribe(target, sources[i % len(sources)], args.timeout, slots, delivered)
            for i in range(args.count)
        )
    )
    connect_s = time.monotonic() - started
    subscribers = [protocol for protocol, failure, _ in results if failure is None and protocol]
    failures = Counter(failure for _, failure, _ in results if failure is not None)
    waits = [seconds * 1000 for _, failure, seconds in results if failure is None]
    emit(
        {
            "phase": "connected",
            "connected": len(subscribers),
            "failures": dict(failures),
            "connect_s": round(connect_s, 2),
            "first_frame_p50_ms": round(percentile(waits, 50), 1),
            "first_frame_p99_ms": round(percentile(waits, 99), 1),
            "first_frame_max_ms": round(max(waits, default=float("nan")), 1),
        }
    )
    delivered.count_down(by=args.count - len(subscribers))  # the failed ones never will
    stop = asyncio.create_task(read_line())
    all_delivered = asyncio.create_task(delivered.done.wait())
    await asyncio.wait({stop, all_delivered}, return_when=asyncio.FIRST_COMPLETED)
    all_delivered.cancel()
    emit(
        {
            "phase": "delivered",
            "update_at": [s.update_at for s in subscribers if s.update_at is not None],
            "closed_early": sum(
                s.transport is None or s.transport.is_closing() for s in subscribers
            ),
            "frames": sum(s.frames for s in subscribers),
        }
    )
    await (stop if not stop.done() else read_line())  # the parent's next line: count frames
    emit(
        {
            "phase": "frames",
            "frames": sum(s.frames for s in subscribers),
            "open": sum(
                s.transport is not None and not s.transport.is_closing() for s in subscribers
            ),
        }
    )
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.close()


async def read_line() -> None:
    await asyncio.to_thread(sys.stdin.readline)


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True, help="/api/matches/{id}/metrics/stream")
    parser.add_argument("--count", type=int, required=True, help="subscribers in this process")
    parser.add_argument("--wanted", type=int, default=2, help="totalEvents of the awaited update")
    parser.add_argument("--first-address", type=int, default=2, help="first source 127.0.0.N")
    parser.add_argument("--addresses", type=int, default=16, help="source addresses to spread on")
    parser.add_argument("--in-flight", type=int, default=1000, help="connecting at once")
    parser.add_argument("--timeout", type=float, default=60.0, help="s to connect + first frame")
    args = parser.parse_args(argv)
    if not (args.first_address >= 1 and args.first_address + args.addresses <= 255):
        parser.error("source addresses must stay within 127.0.0.1-254")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_open_files_limit()
    if args.count + 64 > limit:
        raise SystemExit(f"{args.count} subscribers need more than this process's {limit} files")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
