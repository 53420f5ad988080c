"""What one response costs the kernel as one send(2) or as two (head, then body), on loopback.

uvicorn writes a response's head and body separately and uvloop sends each at once; the service's
protocol joins them (`HeadWithBody` in `fanfinity/api/protocol.py`). This prints the CPU time per
response of both ways, a reader in another process draining the socket as wrk would.

    uv run python -m scripts.bench.sends
"""

from __future__ import annotations

import argparse
import os
import socket
import time

HEAD = b"h" * 330  # the size of a 202's head with the service's headers
BODY = b"b" * 90  # and its body


def cpu_us_per_response(conn: socket.socket, responses: int, *, joined: bool) -> float:
    started = time.process_time()
    for _ in range(responses):
        if joined:
            conn.sendall(HEAD + BODY)
        else:
            conn.sendall(HEAD)
            conn.sendall(BODY)
    return (time.process_time() - started) / responses * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responses", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader = os.fork()
        if reader == 0:  # the client: read until the server hangs up
            with socket.create_connection(server.getsockname()) as client:
                while client.recv(1 << 16):
                    pass
            os._exit(0)
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(args.rounds):
                two = cpu_us_per_response(conn, args.responses, joined=False)
                one = cpu_us_per_response(conn, args.responses, joined=True)
                print(f"two sends {two:5.1f} us   one send {one:5.1f} us   per response")
        os.waitpid(reader, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
