"""A real server process on a free loopback port: Makazi under uvicorn (or a peer, in bench/).

The live test server and the benchmarks start servers the same way: a
subprocess, polled until its health URL answers, terminated when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["free_port", "makazi_on", "running_server", "uvicorn_argv"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    argv: list[str], port: int, env: dict[str, str] | None = None, health: str = "/"
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; wait until ``health`` answers."""
    import httpx

    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"server {argv[0]} did not start: {err[-2000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def uvicorn_argv(python: str, app: str, port: int, *, factory: bool = False) -> list[str]:
    """The command that serves ``app`` with uvicorn on 127.0.0.1:``port``."""
    argv = [
        python,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return [*argv, "--factory"] if factory else argv


@contextlib.contextmanager
def makazi_on(
    database_url: str, *, workers: int | str = 1, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """This service on a free port against ``database_url``: (base URL, process).

    ``workers`` > 1 runs that many uvicorn worker processes behind the one port.
    """
    port = free_port()
    env = {
        "MAKAZI_DATABASE_URL": database_url,
        "MAKAZI_LOG_LEVEL": "warning",
        **{f"MAKAZI_{k.upper()}": v for k, v in settings.items()},
    }
    argv = uvicorn_argv(sys.executable, "app.main:create_app", port, factory=True)
    if int(workers) > 1:
        argv += ["--workers", str(workers)]
    with running_server(argv, port, env, health="/healthz") as proc:
        yield f"http://127.0.0.1:{port}", proc
