"""Uploads and downloads: stored bytes, content types checked against the bytes, size limits."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.test import override_settings

from messaging import services
from messaging.models import File
from tests.conftest import Cast
from tests.helpers import (
    API,
    CSV_BYTES,
    assert_error,
    db_state,
    drain,
    error,
    png_bytes,
    upload,
)

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
FILE_KEYS = ("id", "name", "contentType", "size", "sha256", "ownerId", "createdAt", "url")


def _stored_blobs() -> set[str]:
    root = Path(settings.MEDIA_ROOT)
    return {
        str(Path(folder, name).relative_to(root))
        for folder, _, names in os.walk(root)
        for name in names
    }


def _download(client: Any, file_id: str) -> tuple[Any, bytes]:
    response = drain(client.get(f"{API}/files/{file_id}/content/"))
    return response, getattr(response, "body", b"")


def test_upload_stores_the_bytes_with_their_size_and_sha256(cast: Cast) -> None:
    response = upload(cast.client(cast.alice), "data.csv", CSV_BYTES, "text/csv")
    assert response.status_code == 201
    body = response.json()
    file = File.objects.get(pk=body["id"])
    assert {key: body[key] for key in FILE_KEYS} == {
        "id": file.pk,
        "name": "data.csv",
        "contentType": "text/csv",
        "size": len(CSV_BYTES),
        "sha256": hashlib.sha256(CSV_BYTES).hexdigest(),
        "ownerId": cast.alice.pk,
        "createdAt": body["createdAt"],
        "url": f"/api/v1/files/{file.pk}/content/",
    }
    assert body["id"].startswith("file_")
    assert (file.size, file.sha256) == (len(CSV_BYTES), hashlib.sha256(CSV_BYTES).hexdigest())
    # The stored name is the id alone: the user's file name never becomes a path.
    assert file.content.name == f"files/{file.created_at:%Y/%m}/{file.pk}"
    with default_storage.open(file.content.name, "rb") as stored:
        assert stored.read() == CSV_BYTES


def test_upload_png(cast: Cast) -> None:
    data = png_bytes()
    response = upload(cast.client(cast.alice), "pixel.png", data, "image/png")
    assert response.status_code == 201
    assert response.json()["contentType"] == "image/png"
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.json()["size"] == len(data)


@pytest.mark.parametrize(
    ("name", "data", "claimed", "stored"),
    [
        ("pixel", png_bytes(), "application/octet-stream", "image/png"),
        ("pixel.png", png_bytes(), "application/octet-stream", "image/png"),
        ("data", CSV_BYTES, "application/octet-stream", "text/plain"),
        ("data.csv", CSV_BYTES, "application/octet-stream", "text/csv"),
        ("pixel.png", png_bytes(), "image/png; charset=binary", "image/png"),
        ("data.json", b'{"a": [1, 2]}', "application/json", "application/json"),
        ("page.html", b"<script>alert(1)</script>", "text/html", "text/html"),
    ],
)
def test_the_stored_content_type_follows_the_bytes(
    cast: Cast, name: str, data: bytes, claimed: str, stored: str
) -> None:
    response = upload(cast.client(cast.alice), name, data, claimed)
    assert response.status_code == 201, response.content
    assert response.json()["contentType"] == stored
    assert File.objects.get().content_type == stored


def test_a_generic_claim_with_a_bin_name_is_sniffed(cast: Cast) -> None:
    response = upload(cast.client(cast.alice), "pixel.bin", png_bytes(), "application/octet-stream")
    assert response.status_code == 201
    assert response.json()["contentType"] == "image/png"


@pytest.mark.parametrize(
    ("name", "data", "claimed", "fields"),
    [
        (
            "fake.png",
            b"just some text",
            "image/png",
            ["Content type does not match the file's bytes."],
        ),
        ("real.txt", png_bytes(), "text/plain", ["Content type does not match the file's bytes."]),
        ("real.csv", png_bytes(), "text/csv", ["Content type does not match the file's bytes."]),
        ("bad.json", b"{not json", "application/json", ["Invalid JSON."]),
        ("bin.txt", b"abc\x00def", "text/plain", ["Content type does not match the file's bytes."]),
        (
            "fake.pdf",
            b"plain words",
            "application/pdf",
            ["Content type does not match the file's bytes."],
        ),
        ("empty.csv", b"", "text/csv", ["The file is empty."]),
    ],
)
def test_bytes_that_contradict_the_claim_are_refused(
    cast: Cast, name: str, data: bytes, claimed: str, fields: list[str]
) -> None:
    blobs, before = _stored_blobs(), db_state()
    response = upload(cast.client(cast.alice), name, data, claimed)
    assert_error(response, 400, "invalid", fields={"file": fields})
    assert db_state() == before
    assert _stored_blobs() == blobs


def test_upload_without_a_file_field_is_400(cast: Cast) -> None:
    response = cast.client(cast.alice).post(
        f"{API}/files/", {"upload": "not a file"}, format="multipart"
    )
    assert response.json() == error(
        "invalid", "Send the file in a multipart field named 'file'.", {"file": ["Required."]}
    )
    assert response.status_code == 400


def test_upload_with_the_file_as_a_plain_field_is_400(cast: Cast) -> None:
    response = cast.client(cast.alice).post(f"{API}/files/", {"file": "text"}, format="multipart")
    assert_error(response, 400, "invalid", fields={"file": ["Required."]})


def test_upload_as_json_is_415(cast: Cast) -> None:
    response = cast.client(cast.alice).post(f"{API}/files/", {"file": "x"}, format="json")
    assert_error(response, 415, "unsupported_media_type")
    assert not File.objects.exists()


@override_settings(MAX_FILE_SIZE_MB=1)
def test_an_upload_over_the_limit_is_413(cast: Cast) -> None:
    blobs = _stored_blobs()
    response = upload(cast.client(cast.alice), "big.bin", b"\x01" * 2 * MB, "application/x-big")
    assert response.json() == error("too_large", "Files are limited to 1 MB.")
    assert response.status_code == 413
    assert not File.objects.exists()
    assert _stored_blobs() == blobs


@override_settings(MAX_FILE_SIZE_MB=1)
def test_an_upload_one_byte_over_the_limit_is_stopped_while_parsing(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The declared length is within the multipart allowance, so only the upload handler that
    # counts the file's bytes can refuse it: the service must never see the file.
    def never(**kwargs: object) -> None:
        raise AssertionError("the oversize file reached file_create")

    monkeypatch.setattr(services, "file_create", never)
    response = upload(cast.client(cast.alice), "big.bin", b"\x01" * (MB + 1), "application/x-big")
    assert_error(response, 413, "too_large")
    assert not File.objects.exists()


@override_settings(MAX_FILE_SIZE_MB=1)
def test_an_upload_of_exactly_the_limit_is_accepted(cast: Cast) -> None:
    response = upload(cast.client(cast.alice), "edge.bin", b"\x00" * MB, "application/x-edge")
    assert response.status_code == 201
    assert response.json()["size"] == MB


def test_download_returns_the_bytes_as_a_sandboxed_attachment(cast: Cast) -> None:
    client = cast.client(cast.alice)
    file_id = upload(client, "data.csv", CSV_BYTES, "text/csv").json()["id"]
    response, body = _download(client, file_id)
    assert response.status_code == 200
    assert body == CSV_BYTES
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == 'attachment; filename="data.csv"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert response["Content-Length"] == str(len(CSV_BYTES))


def test_html_is_never_served_inline(cast: Cast) -> None:
    client = cast.client(cast.alice)
    html = b"<script>alert(document.cookie)</script>"
    file_id = upload(client, "page.html", html, "text/html").json()["id"]
    response, body = _download(client, file_id)
    assert body == html
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"


def test_file_names_lose_their_path_and_control_characters(cast: Cast) -> None:
    response = upload(cast.client(cast.alice), "../../etc/pass\twd.csv", CSV_BYTES, "text/csv")
    assert response.status_code == 201
    assert response.json()["name"] == "passwd.csv"


def test_metadata_is_readable_by_a_member_once_attached(cast: Cast) -> None:
    alice = cast.client(cast.alice)
    file_id = upload(alice, "data.csv", CSV_BYTES, "text/csv").json()["id"]
    bob = cast.client(cast.bob)
    assert_error(bob.get(f"{API}/files/{file_id}/"), 404, "not_found")
    alice.post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "see", "fileIds": [file_id]},
        format="json",
    )
    assert bob.get(f"{API}/files/{file_id}/").json()["id"] == file_id
    response, body = _download(bob, file_id)
    assert (response.status_code, body) == (200, CSV_BYTES)
    assert_error(cast.client(cast.charlie).get(f"{API}/files/{file_id}/"), 404, "not_found")


def test_json_upload_keeps_its_bytes(cast: Cast) -> None:
    data = json.dumps({"rows": [1, 2, 3]}).encode()
    client = cast.client(cast.alice)
    file_id = upload(client, "rows.json", data, "application/json").json()["id"]
    assert _download(client, file_id)[1] == data


def test_on_the_filesystem_there_is_no_download_url_and_we_stream(cast: Cast) -> None:
    from messaging.storage import download_url

    client = cast.client(cast.alice)
    file = File.objects.get(pk=upload(client, "data.csv", CSV_BYTES, "text/csv").json()["id"])
    assert download_url(file.content, filename=file.name, content_type=file.content_type) is None
    response, body = _download(client, file.pk)
    assert (response.status_code, body) == (200, CSV_BYTES)
