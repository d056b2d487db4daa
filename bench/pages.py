"""Small pages at the HTTP floor: page 50 of a walk, a CQL2 page and a 10k page vs raw SQL.

A small page's cost is mostly fixed cost (HTTP, routing, dependencies, the
read transaction's round trips, assembling the tail), so it is compared with
two limits measured in the same run, side by side: the raw SQL that yields
the same Feature texts (psycopg, prepared after its fifth run, as the app's
connections are) and ``GET /conformance``, the cheapest answer the app gives
over HTTP (no database).  Every contender is called in turn, round after
round (interleaved, so a shared machine's load falls on all alike); each
figure is the median of the rounds after a warm-up, all through keep-alive
``httpx`` clients.

A third limit, "the bytes over HTTP", is a bare ASGI app on the same uvicorn
sending a prebuilt body of the page's size (``bench/_bytes_server.py``): its
time plus the raw SQL's is what any server answering through HTTP would need,
shown as its ratio to the raw SQL.

A fourth, "the SQL through a bare FastAPI endpoint" (``bench/_sql_server.py``), runs the
raw SQL in a sync FastAPI endpoint on the same uvicorn and sends the joined texts: the
least any page served by FastAPI, psycopg and a whole answer costs, without anything
Makazi adds (validation, visibility, the ETag, counts, links, middleware).

``MAKAZI_BENCH_PAGES_BASELINE=<git revision>`` adds that revision's code as
a second server on the same database (``git archive`` into a temporary directory), for
before/after figures from one run.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import HERE, BenchContext, markdown_table
from bench.features import feature_statement
from tests.support.server import free_port, makazi_on, running_server, uvicorn_argv

REPEAT = int(os.environ.get("MAKAZI_BENCH_PAGES_REPEAT", "60"))
BYTES = "the bytes over HTTP (x: + raw SQL)"
BARE = "the SQL through a bare FastAPI endpoint"


@contextmanager
def _baseline(ctx: BenchContext, revision: str) -> Iterator[tuple[str, int]]:
    """The code of ``revision`` (its ``app`` and ``geo`` packages) served: (base URL, pid)."""
    archive = subprocess.run(
        ["git", "archive", revision, "app", "geo"], cwd=HERE.parent, capture_output=True, check=True
    ).stdout
    port = free_port()
    argv = uvicorn_argv(sys.executable, "app.main:create_app", port, factory=True)
    env = {"MAKAZI_DATABASE_URL": ctx.url, "MAKAZI_LOG_LEVEL": "warning"}
    # outside the worktree, so that linters and type checkers never read the copy
    with tempfile.TemporaryDirectory(prefix=f"makazi-baseline-{revision}-") as target:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        with running_server([*argv, "--app-dir", target], port, env, health="/healthz") as proc:
            yield f"http://127.0.0.1:{port}", proc.pid


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each contender, called in turn round after round.

    The order turns by one each round, so no contender always follows another.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(warmup + rounds):
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            fn = contenders[name]
            start = time.perf_counter()
            fn()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _fetch(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> None:
    conn.execute(statement, params).fetchall()


def _fetch_and_count(
    conn: psycopg.Connection[Any], statements: tuple[str, str], params: dict[str, Any]
) -> None:
    """The page's Feature texts, then the count its ``numberMatched`` gives."""
    conn.execute(statements[0], params).fetchall()
    conn.execute(statements[1], params).fetchone()


SAME_ANSWER = "raw SQL + count (numberMatched)"
"""The contender that writes what Makazi answers when it gives ``numberMatched``."""


def run(ctx: BenchContext) -> str:
    with psycopg.connect(ctx.conninfo) as conn:
        after = conn.execute(
            "SELECT id FROM structures WHERE deleted_at IS NULL ORDER BY id OFFSET 48999 LIMIT 1"
        ).fetchone()
        assert after is not None
    walk = ("t.id > %(after)s", {"after": after[0]})
    cases: list[tuple[str, dict[str, Any], tuple[str, str, dict[str, Any]], int]] = [
        (
            "page 50 of a 1,000-item walk",
            {"limit": 1000, "after": after[0]},
            (walk[0], "ORDER BY t.id LIMIT 1000", walk[1]),
            REPEAT,
        ),
        (
            "page 50 of a 10-item walk",
            {"limit": 10, "after": after[0]},
            (walk[0], "ORDER BY t.id LIMIT 10", walk[1]),
            REPEAT,
        ),
        (
            "CQL2 page",
            {
                "filter": "use = 'school' AND storeys >= 2",
                "filter-lang": "cql2-text",
                "limit": 1000,
            },
            ("t.use = 'school' AND t.storeys >= 2", "ORDER BY t.id LIMIT 1000", {}),
            REPEAT,
        ),
        (
            "10,000-feature page",
            {"limit": 10000, "after": after[0]},
            (walk[0], "ORDER BY t.id LIMIT 10000", walk[1]),
            max(5, REPEAT // 4),
        ),
    ]
    baseline = os.environ.get("MAKAZI_BENCH_PAGES_BASELINE")
    floor_port = free_port()
    floor_argv = uvicorn_argv(sys.executable, "bench._bytes_server:app", floor_port)
    bare_port = free_port()
    bare_argv = uvicorn_argv(sys.executable, "bench._sql_server:app", bare_port)
    bare_env = {
        "MAKAZI_BENCH_CONNINFO": ctx.conninfo,
        "MAKAZI_BENCH_SQL_CASES": json.dumps(
            [[feature_statement(where, order), params] for _, _, (where, order, params), _ in cases]
        ),
    }
    rows: list[list[object]] = []
    with ExitStack() as stack:
        url, proc = stack.enter_context(makazi_on(ctx.url))
        servers = {"Makazi": url}
        pids = {"Makazi": proc.pid}
        if baseline:
            name = f"baseline {baseline}"
            servers[name], pids[name] = stack.enter_context(_baseline(ctx, baseline))
        stack.enter_context(
            running_server([*floor_argv, "--app-dir", str(HERE.parent)], floor_port)
        )
        bare = stack.enter_context(
            running_server(
                [*bare_argv, "--app-dir", str(HERE.parent)], bare_port, bare_env, health="/docs"
            )
        )
        pids[BARE] = bare.pid
        client = stack.enter_context(httpx.Client(timeout=120))
        conn = stack.enter_context(psycopg.connect(ctx.conninfo))
        headers = {"Accept-Encoding": "identity"}

        def get(url: str, params: dict[str, Any] | None = None) -> None:
            response = client.get(url, params=params, headers=headers)
            response.raise_for_status()
            _ = response.content

        floor = _interleaved(
            {name: partial(get, f"{base}/conformance") for name, base in servers.items()},
            REPEAT,
            10,
        )
        for name, seconds in floor.items():
            rows.append(
                [
                    "GET /conformance (HTTP floor)",
                    name,
                    seconds * 1000,
                    "",
                    "",
                    f"{os.getloadavg()[0]:.1f}",
                ]
            )
        for index, (case, params, (where, order, sql_params), rounds) in enumerate(cases):
            statement = feature_statement(where, order)
            contenders: dict[str, Callable[[], object]] = {
                name: partial(get, f"{base}/collections/structures/items", params)
                for name, base in servers.items()
            }
            contenders["raw SQL"] = partial(_fetch, conn, statement, sql_params)
            answer = client.get(f"{url}/collections/structures/items", params=params)
            size = len(answer.content)
            if "numberMatched" in answer.json():
                # the same answer needs the count too, which the page alone does not pay
                count = (
                    f"SELECT count(*) FROM structures t WHERE t.deleted_at IS NULL AND ({where})"
                )
                contenders[SAME_ANSWER] = partial(
                    _fetch_and_count, conn, (statement, count), sql_params
                )
            contenders[BYTES] = partial(get, f"http://127.0.0.1:{floor_port}/", {"bytes": size})
            contenders[BARE] = partial(get, f"http://127.0.0.1:{bare_port}/pages/{index}")
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            medians = _interleaved(contenders, rounds, 5)
            calls = rounds + 5
            cpu = {name: (_cpu_seconds(pid) - cpu[name]) / calls for name, pid in pids.items()}
            load = f"{os.getloadavg()[0]:.1f}"
            for name, seconds in medians.items():
                ratio = f"{seconds / medians['raw SQL']:.2f}"
                if name == BYTES:  # what a server needs at least: the SQL, then the bytes
                    ratio = f"{(seconds + medians['raw SQL']) / medians['raw SQL']:.2f}"
                if SAME_ANSWER in medians and name != "raw SQL":
                    ratio += f" ({seconds / medians[SAME_ANSWER]:.2f} x the same answer)"
                used = f"{cpu[name] * 1000:.1f}" if name in cpu else ""
                rows.append([case, name, seconds * 1000, ratio, used, load])
                print(rows[-1], flush=True)
    table = markdown_table(
        ["request", "contender", "median ms", "x raw SQL", "server CPU ms/request", "load (1 min)"],
        rows,
    )
    return (
        table + f"\n\n{ctx.structures:,} structures; median of {REPEAT} interleaved rounds "
        "(the 10k page a quarter of them) after warm-ups; uncompressed bodies; the raw SQL "
        "reads the same Feature texts with psycopg (prepared); the bytes over HTTP are a body "
        "of the page's size from a bare ASGI app on the same uvicorn, its x column "
        "(its time + the raw SQL's) / the raw SQL's; the bare FastAPI endpoint runs the raw SQL "
        "in a sync endpoint and answers with the joined texts (bench/_sql_server.py); "
        "where Makazi's page carries "
        "numberMatched, a second raw contender also runs the count (the same answer), and "
        "each ratio to it is in brackets; server CPU is the uvicorn "
        "process's user + system time over the case's calls (/proc), which a busy machine "
        "inflates less than wall time. The machine was shared with "
        "other jobs while this ran (the load column)."
    )
