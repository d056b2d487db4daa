"""The read-routing middleware holds a GET answer whole, but never beyond its bound."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from app.read_routing import ReadRouting
from geo.core.replicas import ROUTE

CHUNK = b"x" * 1000


def _run(max_held_bytes: int, chunks: int) -> list[tuple[str, int]]:
    """Events in order: ("app", n) when the app sent chunk n, ("out", bytes) when the
    client was sent a body message of that many bytes."""
    events: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(chunks):
            events.append(("app", n))
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            events.append(("out", len(message.get("body", b""))))

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(ReadRouting(app, max_held_bytes=max_held_bytes)(scope, receive, send))
    return events


def test_a_small_answer_is_sent_once_whole() -> None:
    events = _run(max_held_bytes=10_000, chunks=5)
    assert [e for e in events if e[0] == "out"] == [("out", 5000)]
    assert events[-1] == ("out", 5000)  # nothing went out before the app had finished


def test_an_answer_past_the_bound_streams_on() -> None:
    events = _run(max_held_bytes=2_500, chunks=10)
    sent = [size for kind, size in events if kind == "out"]
    assert sum(sent) == 10 * len(CHUNK)  # every byte, once
    first_out = events.index(next(e for e in events if e[0] == "out"))
    # the held part went out as soon as it passed 2,500 bytes: after the app's third chunk
    assert events[:first_out] == [("app", 0), ("app", 1), ("app", 2)]
    assert sent[0] == 3000


def test_an_answer_made_after_a_lost_replica_is_retried_on_the_primary() -> None:
    """An endpoint that turns the lost replica into its own 503 (``/healthz`` does) still gets
    its request answered again from the primary; the client sees only that answer."""
    runs: list[bool] = []
    statuses: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTE.get()
        assert route is not None
        runs.append(route.primary)
        if not route.primary:
            route.lost = True  # what Database.read does when its replica goes away
        status = 200 if route.primary else 503
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope: Scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
    asyncio.run(ReadRouting(app)(scope, receive, send))
    assert runs == [False, True]
    assert statuses == [200]
