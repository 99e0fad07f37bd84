"""Files on S3-compatible storage, for real: moto's S3 server on 127.0.0.1 behind django-storages'
S3Storage, configured by chatproject/settings.py itself (USE_S3 and the AWS_* variables).

moto does not check presigned signatures or expiry, so the tests check that the URL is signed
(X-Amz-Signature), that X-Amz-Expires is within five minutes, and that it serves the bytes.
Without moto[server] the tests skip, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.conf import settings
from django.core.files.storage import storages
from django.test import override_settings

from messaging import services
from messaging.models import File
from messaging.storage import download_url
from tests.conftest import Cast
from tests.helpers import API, CSV_BYTES, load_settings, upload
from tests.integration.conftest import free_port, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@dataclass
class Bucket:
    client: Any  # a boto3 S3 client on the same server
    endpoint: str
    name: str

    def object_keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A moto S3 server with an empty bucket, and STORAGES as settings.py builds it for
    USE_S3=1 pointed at that server."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] is not installed (pip install -r requirements-dev.txt): {exc}")
    port = free_port()
    # moto keeps its buckets in process-wide state that outlives a server: a bucket of its own
    # per test, and a reset at the end.
    bucket = f"threadline-{secrets.token_hex(6)}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket=bucket)
        with monkeypatch.context() as env:
            built = load_settings(
                env,
                {
                    "USE_S3": "1",
                    "AWS_STORAGE_BUCKET_NAME": bucket,
                    "AWS_S3_ENDPOINT_URL": endpoint,
                    "AWS_S3_REGION_NAME": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                },
            )
        storages = {**settings.STORAGES, "default": built["STORAGES"]["default"]}
        with override_settings(STORAGES=storages):
            yield Bucket(client=client, endpoint=endpoint, name=bucket)
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10)
    finally:
        server.stop()


def test_settings_point_the_default_storage_at_the_bucket(s3: Bucket) -> None:
    from storages.backends.s3 import S3Storage

    storage = storages["default"]
    assert isinstance(storage, S3Storage)
    assert (
        storage.bucket_name,
        storage.endpoint_url,
        storage.signature_version,
        storage.addressing_style,
        storage.file_overwrite,
        storage.default_acl,
        storage.querystring_auth,
        storage.querystring_expire,
    ) == (s3.name, s3.endpoint, "s3v4", "path", False, None, True, 300)


def test_upload_download_and_thread_delete_round_trip_through_the_bucket(
    cast: Cast, s3: Bucket, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    alice = cast.client(cast.alice)
    created = upload(alice, "report.csv", CSV_BYTES, "text/csv")
    assert created.status_code == 201, created.content
    file = File.objects.get(pk=created.json()["id"])
    # The object is in the bucket under the id-only name, and nowhere else.
    assert s3.object_keys() == [file.content.name]
    assert file.content.name == f"files/{file.created_at:%Y/%m}/{file.pk}"
    post = alice.post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "the report", "fileIds": [file.pk]},
        format="json",
    )
    assert post.status_code == 201, post.content

    # A member downloads: 302 to a presigned URL on the bucket.
    response = cast.client(cast.bob).get(f"{API}/files/{file.pk}/content/")
    assert response.status_code == 302
    assert response["Cache-Control"] == "private, no-store"
    url = response["Location"]
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
    assert parts.path == f"/{s3.name}/{file.content.name}"  # path-style addressing
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Signature"]
    assert 0 < int(query["X-Amz-Expires"]) <= 300
    assert query["response-content-disposition"] == 'attachment; filename="report.csv"'
    assert query["response-content-type"] == "text/csv"
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == CSV_BYTES
    assert fetched.headers["Content-Disposition"] == 'attachment; filename="report.csv"'

    # The outsider still gets the one 404, never a URL.
    charlie = cast.client(cast.charlie).get(f"{API}/files/{file.pk}/content/")
    assert charlie.status_code == 404
    assert "Location" not in charlie

    # Deleting the thread orphans the file (attached only there): row and object go, after
    # commit. An upload not attached anywhere was not orphaned by it and stays.
    waiting = File.objects.get(pk=upload(alice, "next.csv", CSV_BYTES, "text/csv").json()["id"])
    assert s3.object_keys() == sorted([file.content.name, waiting.content.name])
    with django_capture_on_commit_callbacks() as callbacks:
        deleted = alice.delete(f"{API}/threads/{cast.thread.pk}/")
        assert deleted.status_code == 204
        assert file.content.name in s3.object_keys(), "the object went before the commit"
    for callback in callbacks:
        callback()
    assert not File.objects.filter(pk=file.pk).exists()
    assert s3.object_keys() == [waiting.content.name]
    # The old URL now finds nothing (S3 says 403 rather than 404 to a signer that may not list).
    assert httpx.get(url, timeout=10).status_code in (403, 404)


def test_a_file_attached_in_another_thread_survives_the_thread_delete(
    cast: Cast, s3: Bucket, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    from tests.factories import ThreadFactory
    from tests.helpers import post

    shared = services.file_create(
        owner=cast.alice,
        name="shared.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    post(cast.thread, cast.alice, "here", file_ids=[shared.pk])
    post(ThreadFactory.create(creator=cast.alice), cast.alice, "there", file_ids=[shared.pk])
    with django_capture_on_commit_callbacks(execute=True):
        services.thread_delete(thread=cast.thread)
    assert File.objects.filter(pk=shared.pk).exists()
    assert s3.object_keys() == [shared.content.name]


def test_file_delete_removes_the_object_after_commit(
    cast: Cast, s3: Bucket, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    file = services.file_create(
        owner=cast.alice,
        name="gone.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.file_delete(files=[file])
    assert s3.object_keys() == []


def test_a_presigned_url_never_outlives_five_minutes(cast: Cast, s3: Bucket) -> None:
    file = services.file_create(
        owner=cast.alice,
        name="a.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    from storages.backends.s3 import S3Storage

    storage = storages["default"]  # the instance behind default_storage and the FileField
    assert isinstance(storage, S3Storage)
    # Even a storage configured for an hour (by hand, past settings' own limit) signs for 300 s.
    storage.querystring_expire = 3600
    url = download_url(file.content, filename="a b\u00e9.csv", content_type="text/csv")
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["300"]
    # A name that is not plain ASCII is encoded as RFC 6266 says, as our own download does.
    assert query["response-content-disposition"] == ["attachment; filename*=utf-8''a%20b%C3%A9.csv"]
    assert httpx.get(url, timeout=10).content == CSV_BYTES
