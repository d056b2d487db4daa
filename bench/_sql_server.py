"""The least a FastAPI server that reads a page from PostgreSQL does: a floor for pages.

``GET /pages/{case}`` runs one of the SQL statements that ``bench.pages`` passes in
``MAKAZI_BENCH_SQL_CASES`` (a JSON list of ``[statement, parameters]``) on a pooled
psycopg connection (prepared after its fifth run, as the raw SQL contender's is), in
a sync endpoint (FastAPI's worker thread, as Makazi's items endpoint), joins the
Feature texts into a FeatureCollection and answers with it whole.  No routing of
its own, no dependencies, no authentication, no ETag, no count, no links: what is
left is FastAPI, uvicorn, psycopg and the page's bytes, so its ratio to the raw SQL
is what any page served by this stack costs at least.
"""

from __future__ import annotations

import json
import os
import queue
from typing import Any

import psycopg
from fastapi import FastAPI, Response
from psycopg.types.string import ByteaBinaryLoader

_CASES: list[tuple[str, dict[str, Any]]] = [
    (statement, params) for statement, params in json.loads(os.environ["MAKAZI_BENCH_SQL_CASES"])
]
_POOL: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()

app = FastAPI()


def _connection() -> psycopg.Connection[Any]:
    try:
        return _POOL.get_nowait()
    except queue.Empty:
        conn = psycopg.connect(os.environ["MAKAZI_BENCH_CONNINFO"], autocommit=True)
        conn.adapters.register_loader("text", ByteaBinaryLoader)
        return conn


@app.get("/pages/{case}")
def page(case: int) -> Response:
    """The Feature texts of statement ``case`` as a FeatureCollection."""
    statement, params = _CASES[case]
    conn = _connection()
    try:
        rows = conn.cursor(binary=True).execute(statement, params).fetchall()
    finally:
        _POOL.put(conn)
    texts = [row[0] for row in rows] or [b""]
    texts[0] = b'{"type":"FeatureCollection","features":[' + texts[0]
    texts[-1] += b"]}"
    return Response(b",".join(texts), media_type="application/geo+json")
