"""Small pages at the HTTP floor: page 50 of a walk and a CQL2 page vs raw SQL and /conformance.

A small page's cost is mostly fixed cost (HTTP, routing, dependencies, the
read transaction's round trips, assembling the tail), so it is compared with
two limits measured in the same run, side by side: the raw SQL that yields
the same Feature texts (psycopg, prepared after its fifth run, as the app's
connections are) and ``GET /conformance``, the cheapest answer the app gives
over HTTP (no database).  Each figure is the median of ``REPEAT`` calls after a
warm-up, all through one keep-alive ``httpx`` client.
"""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from bench.common import BenchContext, makazi_process, markdown_table, median_time
from bench.features import raw_feature_time

REPEAT = 60


def run(ctx: BenchContext) -> str:
    with psycopg.connect(ctx.conninfo) as conn:
        after = conn.execute(
            "SELECT id FROM structures WHERE deleted_at IS NULL ORDER BY id OFFSET 48999 LIMIT 1"
        ).fetchone()
        assert after is not None
    cases: list[tuple[str, dict[str, Any], tuple[str, str, dict[str, Any]]]] = [
        (
            "page 50 of a 1,000-item walk",
            {"limit": 1000, "after": after[0]},
            ("t.id > %(after)s", "ORDER BY t.id LIMIT 1000", {"after": after[0]}),
        ),
        (
            "page 50 of a 10-item walk",
            {"limit": 10, "after": after[0]},
            ("t.id > %(after)s", "ORDER BY t.id LIMIT 10", {"after": after[0]}),
        ),
        (
            "CQL2 page",
            {
                "filter": "use = 'school' AND storeys >= 2",
                "filter-lang": "cql2-text",
                "limit": 1000,
            },
            ("t.use = 'school' AND t.storeys >= 2", "ORDER BY t.id LIMIT 1000", {}),
        ),
    ]
    rows: list[list[object]] = []
    with makazi_process(ctx) as (ours, _proc), httpx.Client(timeout=60) as client:
        headers = {"Accept-Encoding": "identity"}

        def get(path: str, params: dict[str, Any] | None = None) -> None:
            response = client.get(f"{ours}{path}", params=params, headers=headers)
            response.raise_for_status()
            _ = response.content

        floor = median_time(lambda: get("/conformance"), repeat=REPEAT, warmup=10)
        rows.append(["GET /conformance (HTTP floor)", floor * 1000, "", "", ""])
        for name, params, (where, order, sql_params) in cases:
            ours_s = median_time(
                lambda p=params: get("/collections/structures/items", p),  # type: ignore[misc]
                repeat=REPEAT,
                warmup=10,
            )
            raw_s = raw_feature_time(ctx.conninfo, where, order, sql_params, repeat=REPEAT)
            rows.append(
                [name, ours_s * 1000, raw_s * 1000, ours_s / raw_s, (ours_s - raw_s) * 1000]
            )
            print(rows[-1], flush=True)
    table = markdown_table(
        ["request", "Makazi ms", "raw SQL ms", "Makazi / raw", "fixed cost ms (Makazi - raw)"],
        rows,
    )
    return (
        table + f"\n\n{ctx.structures:,} structures; median of {REPEAT} after 10 warm-ups; "
        "uncompressed bodies; the raw SQL reads the same Feature texts with psycopg "
        "(prepared). The machine was shared with other jobs while this ran."
    )
