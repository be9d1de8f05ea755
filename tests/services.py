"""Real services the tests start on loopback: a free port, a private redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start_redis(port: int, workdir: Path) -> subprocess.Popen | None:
    """A private redis-server on ``port`` (nothing persisted; the machine's own Redis is left alone);
    None when redis-server is not installed. The caller terminates it."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL)  # fmt: skip
    if not wait_for_port(port):
        proc.kill()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}")
    return proc
