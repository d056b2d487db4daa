"""What the load run's simulated users do (Locust), weighted like a day of real use.

Map viewers pan and zoom (tiles), GIS clients page through items, planners run
analyses, and mappers now and then upload a short walk. The server, the
tokens and the area come from ``bench/loadtest.py`` through environment
variables.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

from locust import HttpUser, between, task

WEST, SOUTH, EAST, NORTH = (float(v) for v in os.environ["LOAD_BOUNDS"].split(","))
VIEWER = {"Authorization": f"Bearer {os.environ['LOAD_VIEWER_TOKEN']}"}
MAPPER = {"Authorization": f"Bearer {os.environ['LOAD_MAPPER_TOKEN']}"}
SETTLEMENTS = [int(v) for v in os.environ["LOAD_SETTLEMENTS"].split(",")]
READ_ONLY = os.environ.get("LOAD_READ_ONLY") == "1"
"""The scaling run compares read capacity: no uploads then."""


def _tile(z: int) -> str:
    lon, lat = random.uniform(WEST, EAST), random.uniform(SOUTH, NORTH)
    n = 1 << z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return f"/tiles/{z}/{x}/{y}.mvt"


def _walk() -> bytes:
    lon, lat = random.uniform(WEST, EAST), random.uniform(SOUTH, NORTH)
    start = random.randrange(0, 10**9)
    points = "".join(
        f'<trkpt lat="{lat + i * 1e-5:.7f}" lon="{lon:.7f}">'
        f"<time>2026-01-01T00:{(start + i) // 60 % 60:02d}:{(start + i) % 60:02d}Z</time></trkpt>"
        for i in range(30)
    )
    return (
        '<?xml version="1.0"?><gpx version="1.1" creator="load" '
        f'xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>{points}</trkseg></trk></gpx>'
    ).encode()


class FieldDay(HttpUser):
    """One client: mostly map and GIS reads, some analyses, a few uploads."""

    wait_time = between(0.05, 0.3)

    @task(10)
    def tiles(self) -> None:
        z = random.choice((14, 15, 16, 16, 17))
        with self.client.get(_tile(z), name="tile", catch_response=True) as response:
            if response.status_code in (200, 204):
                response.success()

    @task(6)
    def items(self) -> None:
        lon, lat = random.uniform(WEST, EAST), random.uniform(SOUTH, NORTH)
        bbox = f"{lon - 0.002},{lat - 0.002},{lon + 0.002},{lat + 0.002}"
        self.client.get(
            f"/collections/structures/items?bbox={bbox}&limit=100", name="items (bbox page)"
        )

    @task(2)
    def summary(self) -> None:
        settlement = random.choice(SETTLEMENTS)
        self.client.get(f"/settlements/{settlement}/summary", name="summary")

    @task(1)
    def access(self) -> None:
        settlement = random.choice(SETTLEMENTS)
        self.client.get(
            "/analysis/access?facility_type=water_point&max_distance_m=100"
            f"&settlement_id={settlement}",
            headers=VIEWER,
            name="analysis access",
        )

    @task(1)
    def upload(self) -> None:
        if READ_ONLY:
            return
        headers: dict[str, Any] = {**MAPPER, "Content-Type": "application/gpx+xml"}
        self.client.post(
            "/traces?visibility=private", data=_walk(), headers=headers, name="trace upload"
        )
