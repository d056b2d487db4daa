"""A wheel of this checkout, installed into a clean virtualenv, serves a working ``/map``.

The wheel is built from a copy of the checkout (so no ``build/`` or ``*.egg-info`` is
written into it and no stale ``build/lib`` leaks in), installed with pip into a new
venv (dependencies from the configured index, through pip's cache), and ``makazi
serve`` runs from an empty temporary folder against a fresh database in the session's
cluster.  It must find the Alembic scripts (the ``migrations`` package), MapLibre GL JS
(vendored in ``app/static/vendor``) and Swagger UI for ``/docs`` (vendored in
``app/static/vendor/swagger-ui``) inside the installed package, not in the checkout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.browser import wait_until
from tests.support.server import free_port, running_server

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "makazi_wheel"
VENDOR = ("maplibre-gl.js", "maplibre-gl.css", "LICENSE.txt", "VERSION")
SWAGGER_UI = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "favicon-32x32.png",
    "LICENSE",
    "NOTICE",
    "swagger-ui-bundle.js.LICENSE.txt",
    "VERSION",
)

# Not copied into the build: local state, caches and earlier build output.
_TOP_LEVEL_SKIP = {".git", ".venv", "data", "build", "dist", "node_modules"}
_SKIP_EVERYWHERE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = set(_SKIP_EVERYWHERE(folder, names))
    if Path(folder).resolve() == ROOT:
        skipped |= _TOP_LEVEL_SKIP & set(names)
    return skipped


def _copy_source(target: Path) -> None:
    """Copy what a release would hold: the files git knows (tracked or not ignored).

    Local state such as a benchmark cluster in bench/out (sockets, gigabytes)
    stays behind.  Outside a git checkout, copy the tree minus known local state.
    """
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        timeout=60,
    )
    if listed.returncode != 0 or not listed.stdout:
        shutil.copytree(ROOT, target, ignore=_ignore)
        return
    for name in listed.stdout.decode().split("\0"):
        origin = ROOT / name
        if name and origin.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)


def _run(argv: list[str], *, timeout: float, cwd: Path | None = None) -> str:
    """Run ``argv``; fail the test with its output when it fails."""
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass
class Installed:
    """The built wheel and the clean venv it is installed in."""

    wheel: Path
    venv: Path
    elsewhere: Path  # an empty working folder, outside the checkout

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@dataclass
class Served:
    """``makazi serve`` from the installed wheel, and its database."""

    base: str
    database_url: str


@pytest.fixture(scope="module")
def clean_env() -> Iterator[None]:
    """No variable that would let the venv's Python see the checkout or another venv."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, clean_env: None) -> Installed:
    """Build the wheel from a copy of the checkout and pip-install it into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    source, wheels, venv, elsewhere = (base / n for n in ("src", "dist", "venv", "elsewhere"))
    _copy_source(source)
    pip_quiet = ["--quiet", "--disable-pip-version-check"]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            *pip_quiet,
            "--no-deps",
            "-w",
            str(wheels),
            str(source),
        ],
        timeout=300,
    )
    (wheel,) = wheels.glob("makazi-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", *pip_quiet, str(wheel)], timeout=720
    )
    elsewhere.mkdir()
    assert not elsewhere.resolve().is_relative_to(ROOT)
    return Installed(wheel=wheel, venv=venv, elsewhere=elsewhere)


@pytest.fixture(scope="module")
def served(installed: Installed, cluster: EmbeddedCluster) -> Iterator[Served]:
    """``<venv>/bin/makazi serve`` in the empty folder; it migrates the new database itself."""
    url = cluster.create_database(DATABASE, drop=True)
    port = free_port()
    env_tool = shutil.which("env") or "/usr/bin/env"
    # `env -C DIR` starts makazi (exec, same pid) in the empty folder, not in the checkout
    argv = [env_tool, "-C", str(installed.elsewhere), str(installed.bin / "makazi"), "serve"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {"MAKAZI_DATABASE_URL": url, "MAKAZI_LOG_LEVEL": "warning"}
    try:
        # running_server terminates the server and waits for it when the block ends
        with running_server(argv, port, env, health="/healthz"):
            yield Served(base=f"http://127.0.0.1:{port}", database_url=url)
    finally:
        cluster.drop_database(DATABASE)


def test_vendored_maplibre_is_the_makefiles_version() -> None:
    vendor = ROOT / "app" / "static" / "vendor"
    pinned = re.search(r"^MAPLIBRE_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned, "MAPLIBRE_VERSION is not set in the Makefile"
    assert (vendor / "VERSION").read_text().strip() == pinned[1]
    assert f"/v{pinned[1]}/LICENSE.txt" in (vendor / "maplibre-gl.js").read_text()[:500]
    assert "BSD" in (vendor / "maplibre-gl.js").read_text()[:500]
    assert "Redistribution and use" in (vendor / "LICENSE.txt").read_text()


def test_vendored_pmtiles_is_the_makefiles_version() -> None:
    folder = ROOT / "app" / "static" / "vendor" / "pmtiles"
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^PMTILES_VERSION := (\S+)$", makefile, re.M)
    fflate = re.search(r"^FFLATE_VERSION := (\S+)$", makefile, re.M)
    assert pinned and fflate, "PMTILES_VERSION / FFLATE_VERSION are not set in the Makefile"
    assert (folder / "VERSION").read_text().strip() == (
        f"pmtiles {pinned[1]} (bundles fflate {fflate[1]})"
    )
    assert (folder / "pmtiles.js").read_text().startswith('"use strict";var pmtiles=')
    assert "sourceMappingURL" not in (folder / "pmtiles.js").read_text()
    assert "Protomaps" in (folder / "LICENSE.txt").read_text()
    assert "MIT" in (folder / "fflate-LICENSE").read_text()


def test_wheel_holds_migrations_and_web_assets(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    migrations = {
        f"migrations/{p.relative_to(ROOT / 'migrations').as_posix()}"
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and p.suffix in {".py", ".mako"} and "__pycache__" not in p.parts
    }
    assert {"migrations/env.py", "migrations/script.py.mako"} <= migrations
    assert any(n.startswith("migrations/versions/0001_") for n in migrations)
    assert migrations <= names, sorted(migrations - names)
    assert {f"app/static/vendor/{n}" for n in VENDOR} <= names
    pmtiles = {f"app/static/vendor/pmtiles/{n}" for n in ("pmtiles.js", "LICENSE.txt", "VERSION")}
    assert pmtiles <= names, sorted(pmtiles - names)
    swagger_ui = {f"app/static/vendor/swagger-ui/{n}" for n in SWAGGER_UI}
    assert swagger_ui <= names, sorted(swagger_ui - names)
    assert {f"app/static/map/{n}" for n in ("index.html", "map.js", "map.css")} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "data/"))]


def test_installed_packages_come_from_the_venv(installed: Installed) -> None:
    probe = (
        "import json, sysconfig, app, geo, migrations\n"
        "from geo.core.db import MIGRATIONS_DIR\n"
        "print(json.dumps({'site': sysconfig.get_paths()['purelib'],"
        " 'files': [m.__file__ for m in (app, geo, migrations)],"
        " 'migrations_dir': str(MIGRATIONS_DIR)}))"
    )
    out = json.loads(
        _run([str(installed.bin / "python"), "-c", probe], cwd=installed.elsewhere, timeout=120)
    )
    site = Path(out["site"]).resolve()
    assert site.is_relative_to(installed.venv.resolve())
    for file in out["files"]:
        assert Path(file).resolve().is_relative_to(site), file
    assert Path(out["migrations_dir"]) == site / "migrations"


def test_serves_map_with_maplibre(served: Served) -> None:
    health = httpx.get(f"{served.base}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    page = httpx.get(f"{served.base}/map", timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/vendor/maplibre-gl.js" in page.text
    js = httpx.get(f"{served.base}/static/vendor/maplibre-gl.js", timeout=30)
    assert js.status_code == 200, js.text[:500]
    assert js.headers["content-type"].startswith("text/javascript")
    assert len(js.content) > 500_000
    assert "maplibregl" in js.text[:5000] or "MapLibre" in js.text[:500]
    css = httpx.get(f"{served.base}/static/vendor/maplibre-gl.css", timeout=10)
    assert css.status_code == 200
    licence = httpx.get(f"{served.base}/static/vendor/LICENSE.txt", timeout=10)
    assert licence.status_code == 200
    assert "Redistribution and use" in licence.text


def test_serves_docs_with_swagger_ui(served: Served) -> None:
    page = httpx.get(f"{served.base}/docs", timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text
    for name, media_type in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ]:
        assert f"/static/vendor/swagger-ui/{name}" in page.text
        asset = httpx.get(f"{served.base}/static/vendor/swagger-ui/{name}", timeout=30)
        assert asset.status_code == 200, (name, asset.text[:300])
        assert asset.headers["content-type"].startswith(media_type)
        assert len(asset.content) > 500, name


def test_serve_migrated_the_database(served: Served) -> None:
    engine = create_engine(served.database_url)
    try:
        with engine.connect() as conn:
            revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert list(revisions)
    finally:
        engine.dispose()
    collections = httpx.get(f"{served.base}/collections", timeout=10)
    assert collections.status_code == 200, collections.text
    assert collections.json()["collections"]


@pytest.mark.browser
def test_map_runs_maplibre_in_chromium(served: Served) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and Path("/usr/bin/chromium").exists():
        chromium = "/usr/bin/chromium"
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (Debian package `chromium`; scripts/system-deps.sh "
            "test installs it): the page was only checked over HTTP"
        )
    from playwright.sync_api import sync_playwright

    from tests.web.test_map_browser import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{served.base}/map", wait_until="load")
            assert page.evaluate('typeof maplibregl !== "undefined"'), errors
            wait_until(page, "window.makaziReady === true", 30_000)
            assert errors == []
        finally:
            browser.close()
