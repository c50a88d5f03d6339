"""Local servers for tests: a free port, and moto's standalone S3 server as a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(
    env: dict[str, str] | None = None, out: IO[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start ``moto.server`` on a free port and wait until it accepts connections; returns the
    process and its endpoint URL. ``out`` takes its output (default: discarded)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            assert server.poll() is None and time.time() < deadline, (
                f"moto.server on {port} did not start; its output: {getattr(out, 'name', 'discarded')}"
            )
            time.sleep(0.2)
