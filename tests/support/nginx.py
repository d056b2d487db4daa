"""Debian's nginx with the shipped site file (deploy/nginx.conf) in front of a server.

The nginx cache test and the scaling load run start it the same way: the site
file as it is but for the listen port, the upstream and the cache folder, in a
private prefix folder, in the foreground, stopped when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.server import free_port

__all__ = ["NGINX", "SITE", "nginx_in_front"]

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextlib.contextmanager
def nginx_in_front(upstreams: list[str], root: Path) -> Iterator[str]:
    """nginx proxying (and caching) for ``upstreams`` (``host:port``); its base URL."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed (Debian package nginx)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = SITE.read_text()
    servers = "\n".join(f"    server {upstream};" for upstream in upstreams)
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("    server 127.0.0.1:8000;", servers),
        ("/var/cache/nginx/makazi", str(root / "cache")),
    ):
        assert old in site, f"deploy/nginx.conf no longer says {old!r}"
        site = site.replace(old, new)
    (root / "site.conf").write_text(site)
    temp = "\n".join(
        f"{kind}_temp_path {root / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}\nworker_processes 1;\ndaemon off;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} warn;\nevents {{}}\n"
        f"http {{\naccess_log off;\n{temp}\ninclude {root / 'site.conf'};\n}}\n"
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(root), "-c", str(root / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"nginx did not start: {err}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
