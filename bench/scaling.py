"""The scaling load run: one worker and no replica vs two workers, one replica, behind nginx.

Both set-ups serve the same database (20,000 demo structures in their own bench
cluster, ``bench/out/scale-data``, so the replica's ``pg_basebackup`` stays
small) to the same Locust users doing the same mix of reads (tiles, item pages,
summaries, analyses; no uploads).  The second set-up reads from a streaming
replica of the embedded cluster (``makazi db replica add``) and sits behind
Debian's nginx with the shipped ``deploy/nginx.conf``, whose cache answers
repeated anonymous tiles and pages.  Throughput and p99 per kind of request go
side by side into bench/RESULTS.md under "scaling".

Everything runs on one shared 2-core machine: the replica, the second worker,
nginx and Locust compete with each other for those cores, so this measures the
overhead and the cache's effect here, not what a second machine would add.
"""

from __future__ import annotations

import os

from bench.common import OUT, bench_context, makazi_process, markdown_table
from bench.loadtest import prepare_load, run_locust
from geo.core.standby import add_replica, embedded_replicas, start_replicas
from tests.support.nginx import NGINX, nginx_in_front
from tests.support.server import makazi_on

__all__ = ["scaling_run"]

DATABASE = "makazi_load"
WARM_UP_S = 15
"""Unmeasured load first, so neither set-up is timed with cold caches (the replica's
buffers, each worker's own caches)."""


def scaling_run(users: int = 50, seconds: int = 60) -> str:
    """Both set-ups under the same read load; the markdown written to RESULTS.md."""
    if NGINX is None:
        return "skipped: nginx is not installed (Debian package nginx)\n"
    users = int(os.environ.get("MAKAZI_LOAD_USERS", users))
    seconds = int(os.environ.get("MAKAZI_LOAD_SECONDS", seconds))
    ctx = bench_context(structures=20_000, database=DATABASE, data_dir=OUT / "scale-data")
    start_replicas(ctx.cluster)
    replica = next(iter(embedded_replicas(ctx.cluster)), None) or add_replica(ctx.cluster)
    env = {**os.environ, **prepare_load(ctx), "LOAD_READ_ONLY": "1"}
    with makazi_process(ctx, token_failures_per_minute="0") as (base, _):
        run_locust(base, env, ctx.out / "scaling-warm", users=users, seconds=WARM_UP_S)
        single = run_locust(base, env, ctx.out / "scaling-1", users=users, seconds=seconds)
    with (
        makazi_on(
            ctx.url,
            workers=2,
            database_replica_urls=replica.url(DATABASE),
            token_failures_per_minute="0",
        ) as (base, _),
        nginx_in_front([base.removeprefix("http://")], ctx.out / "scaling-nginx") as proxy,
    ):
        run_locust(proxy, env, ctx.out / "scaling-warm", users=users, seconds=WARM_UP_S)
        scaled = run_locust(proxy, env, ctx.out / "scaling-2", users=users, seconds=seconds)
    by_name = {row["Name"]: row for row in scaled}
    rows: list[list[object]] = []
    for row in single:
        other = by_name.get(row["Name"])
        if other is None:
            continue
        rows.append(
            [
                row["Name"],
                f"{float(row['Requests/s']):.1f}",
                row["99%"],
                row["Failure Count"],
                f"{float(other['Requests/s']):.1f}",
                other["99%"],
                other["Failure Count"],
            ]
        )
    table = markdown_table(
        [
            "request",
            "1 worker: req/s",
            "p99 ms",
            "errors",
            "2 workers + replica + nginx: req/s",
            "p99 ms",
            "errors",
        ],
        rows,
    )
    return (
        f"{users} users for {seconds} s each after {WARM_UP_S} s unmeasured, reads only "
        f"(tiles, item pages, summaries, access analysis), {ctx.structures:,} demo structures; "
        "A: one uvicorn worker on the primary, no replica, no proxy; "
        "B: two workers reading from one streaming replica, "
        "behind nginx with deploy/nginx.conf's cache. "
        "One 2-core machine runs PostgreSQL (primary and replica), the app, nginx and Locust.\n\n"
        f"{table}\n"
    )
