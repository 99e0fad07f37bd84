"""Artifacts on S3-compatible storage, for real: moto's S3 server on 127.0.0.1 behind
django-storages' S3Storage (the `s3` fixture of test_s3.py). Saved through
agents.services.artifact_save, downloaded through a presigned URL that expires within five
minutes, and removed from the bucket with their thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agents import services
from agents.models import AgentRun, AIModel, Artifact
from messaging.models import Message
from tests.conftest import Cast
from tests.helpers import API, png_bytes, post
from tests.integration import test_s3
from tests.integration.test_s3 import Bucket

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

s3 = test_s3.s3  # the moto S3 server fixture

CSV = b"region,sum\r\nNorth,17.50\r\n"


def _run(cast: Cast) -> AgentRun:
    message = post(cast.thread, None, "", status=Message.Status.QUEUED)
    model = AIModel.objects.get(pk="mdl_smollm2")
    return AgentRun.objects.create(
        thread=cast.thread, message=message, requested_by=cast.alice, model=model, mode="crew"
    )


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def test_artifacts_round_trip_through_the_bucket_and_go_with_the_thread(
    cast: Cast, s3: Bucket, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    run = _run(cast)
    chart = services.artifact_save(
        run=run,
        agent="analyst",
        kind="chart",
        title="Sales by region",
        content_type="image/png",
        content=png_bytes(),
        data={"rows": [["North", "17.50"]]},
    )
    table = services.artifact_save(
        run=run,
        agent="analyst",
        kind="table",
        title="Sum by region",
        content_type="text/csv",
        content=CSV,
        data={},
    )
    assert s3.object_keys() == sorted([chart.content.name, table.content.name])
    listed = cast.client(cast.bob).get(f"{API}/threads/{cast.thread.pk}/artifacts/")
    assert [a["id"] for a in listed.json()["artifacts"]] == [chart.pk, table.pk]

    for artifact, body, disposition in (
        (chart, png_bytes(), 'attachment; filename="Sales by region.png"'),
        (table, CSV, 'attachment; filename="Sum by region.csv"'),
    ):
        response = cast.client(cast.bob).get(f"{API}/artifacts/{artifact.pk}/content/")
        assert response.status_code == 302, response.content
        assert response["Cache-Control"] == "private, no-store"
        url = response["Location"]
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
        assert parts.path == f"/{s3.name}/{artifact.content.name}"
        query = _query(url)
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Signature"]
        assert 0 < int(query["X-Amz-Expires"]) <= 300
        assert query["response-content-type"] == artifact.content_type
        # From the bucket nothing renders as a page: always an attachment.
        assert query["response-content-disposition"] == disposition
        fetched = httpx.get(url, timeout=10)
        assert fetched.status_code == 200
        assert fetched.content == body

    charlie = cast.client(cast.charlie).get(f"{API}/artifacts/{chart.pk}/content/")
    assert charlie.status_code == 404 and "Location" not in charlie

    old_url = cast.client(cast.alice).get(f"{API}/artifacts/{chart.pk}/content/")["Location"]
    with django_capture_on_commit_callbacks() as callbacks:
        deleted = cast.client(cast.alice).delete(f"{API}/threads/{cast.thread.pk}/")
        assert deleted.status_code == 204, deleted.content
        assert chart.content.name in s3.object_keys(), "the object went before the commit"
    for callback in callbacks:
        callback()
    assert not Artifact.objects.filter(pk__in=[chart.pk, table.pk]).exists()
    assert s3.object_keys() == []
    assert httpx.get(old_url, timeout=10).status_code in (403, 404)


def test_a_failed_row_leaves_no_object_behind(
    cast: Cast, s3: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(cast)

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("event log unavailable")

    monkeypatch.setattr("messaging.events.record", broken)
    with pytest.raises(RuntimeError):
        services.artifact_save(
            run=run,
            agent="analyst",
            kind="table",
            title="t",
            content_type="text/csv",
            content=CSV,
            data={},
        )
    assert not Artifact.objects.exists()
    assert s3.object_keys() == []
