"""Export workers: bounded, cleaned up when stopped, a failure is a 503 naming its reason."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from geo.core.auth import Principal
from geo.core.errors import Unavailable
from geo.exports.worker import ExportJob, ExportTask, ExportWorkers

PLANNER = Principal(name="worker-test", role="planner", token_id=0)


def task(url: str, fmt: str = "gpkg") -> ExportTask:
    return ExportTask(
        database_url=url,
        collection="structures",
        format=fmt,
        user=PLANNER,
        settlement_id=None,
        timeout_ms=60_000,
        batch=5_000,
    )


def finish(job: ExportJob, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.finished


def test_one_slot_refuses_a_second_export_until_the_first_closes(
    export_database: tuple[str, str, str],
) -> None:
    url, _token, _tile = export_database
    workers = ExportWorkers(1, retry_after_s=7)
    first = workers.start(task(url))
    try:
        with pytest.raises(Unavailable) as refused:
            workers.start(task(url, "shp"))
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "7"
        finish(first)
        assert first.result().name == "structures.gpkg" and first.result().stat().st_size > 0
    finally:
        first.close()
    assert not first.workdir.exists()
    second = workers.start(task(url, "shp"))
    second.close()


def test_closing_a_running_worker_kills_it_and_removes_its_folder(
    export_database: tuple[str, str, str],
) -> None:
    url, _token, _tile = export_database
    job = ExportWorkers(1).start(task(url))
    assert job.workdir.exists() and not job.finished
    job.close()
    assert job.finished and job.process.exitcode != 0
    assert not job.workdir.exists()
    job.close()  # twice is harmless


def test_a_failing_worker_is_a_503_and_a_logged_reason(
    export_database: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, _token, _tile = export_database
    wrong = make_url(url).set(database="no_such_database").render_as_string(hide_password=False)
    job = ExportWorkers(1).start(task(wrong))
    try:
        finish(job)
        with (
            caplog.at_level("ERROR", logger="makazi.exports"),
            pytest.raises(Unavailable) as failed,
        ):
            job.result()
    finally:
        job.close()
    assert "no_such_database" not in failed.value.detail  # clients are not told about hosts
    assert "no_such_database" in caplog.text
    assert not job.workdir.exists()
