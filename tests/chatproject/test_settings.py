"""chatproject/settings.py read from the environment: the storage and gateway knobs.

Each test runs the settings file afresh in its own namespace (runpy) with a chosen
environment, so the settings this test process runs on are untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.helpers import load_settings


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    return load_settings(monkeypatch, env)


def test_the_embedded_profile_stores_files_under_var_media(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = _load(monkeypatch)
    assert loaded["STORAGES"]["default"] == {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": loaded["VAR_DIR"] / "media"},
    }


def test_use_s3_switches_the_default_storage_to_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load(
        monkeypatch,
        USE_S3="1",
        AWS_STORAGE_BUCKET_NAME="threadline",
        AWS_ACCESS_KEY_ID="key",
        AWS_SECRET_ACCESS_KEY="secret",
        AWS_S3_ENDPOINT_URL="https://account.r2.cloudflarestorage.com",
        AWS_S3_REGION_NAME="auto",
    )
    assert loaded["STORAGES"]["default"] == {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": "threadline",
            "access_key": "key",
            "secret_key": "secret",
            "endpoint_url": "https://account.r2.cloudflarestorage.com",
            "region_name": "auto",
            "signature_version": "s3v4",
            "addressing_style": "path",
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": 300,
        },
    }
    # Static files are not affected.
    assert loaded["STORAGES"]["staticfiles"]["BACKEND"].endswith("StaticFilesStorage")


def test_s3_on_aws_itself_lets_boto_choose_the_addressing_style(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = _load(monkeypatch, USE_S3="1", AWS_STORAGE_BUCKET_NAME="b")["STORAGES"]["default"][
        "OPTIONS"
    ]
    assert (options["endpoint_url"], options["addressing_style"]) == (None, "auto")
    assert (options["access_key"], options["secret_key"]) == (None, None)  # boto3's own lookup


def test_the_s3_knobs_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    options = _load(
        monkeypatch,
        USE_S3="true",
        AWS_STORAGE_BUCKET_NAME="b",
        AWS_S3_ENDPOINT_URL="http://127.0.0.1:9000",
        AWS_S3_ADDRESSING_STYLE="virtual",
        AWS_S3_SIGNATURE_VERSION="s3",
        AWS_QUERYSTRING_EXPIRE="60",
    )["STORAGES"]["default"]["OPTIONS"]
    assert options["addressing_style"] == "virtual"
    assert options["signature_version"] == "s3"
    assert options["querystring_expire"] == 60


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"USE_S3": "maybe"}, "USE_S3"),
        ({"USE_S3": "1"}, "AWS_STORAGE_BUCKET_NAME"),
        ({"AWS_QUERYSTRING_EXPIRE": "301"}, "AWS_QUERYSTRING_EXPIRE"),
        ({"AWS_QUERYSTRING_EXPIRE": "3600"}, "AWS_QUERYSTRING_EXPIRE"),
        ({"AWS_QUERYSTRING_EXPIRE": "0"}, "AWS_QUERYSTRING_EXPIRE"),
        ({"AWS_QUERYSTRING_EXPIRE": "five"}, "AWS_QUERYSTRING_EXPIRE"),
        ({"AWS_S3_ADDRESSING_STYLE": "sideways"}, "AWS_S3_ADDRESSING_STYLE"),
        ({"AWS_S3_SIGNATURE_VERSION": "v2"}, "AWS_S3_SIGNATURE_VERSION"),
        ({"AWS_S3_ENDPOINT_URL": "minio:9000"}, "AWS_S3_ENDPOINT_URL"),
    ],
)
def test_a_bad_storage_value_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    if named != "USE_S3":
        env = {"USE_S3": "1", "AWS_STORAGE_BUCKET_NAME": "b", **env}
        if named == "AWS_STORAGE_BUCKET_NAME":
            env.pop("AWS_STORAGE_BUCKET_NAME")
    with pytest.raises(ImproperlyConfigured, match=named):
        _load(monkeypatch, **env)


def test_the_gateway_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load(monkeypatch)
    assert {key: loaded[key] for key in loaded if key.startswith("GATEWAY_")} == {
        "GATEWAY_URL": "",
        "GATEWAY_TIMEOUT_SECONDS": 10,
        "GATEWAY_MAX_BYTES": 1024 * 1024,
        "GATEWAY_ALLOW_PRIVATE": False,
    }


def test_the_gateway_knobs_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load(
        monkeypatch,
        GATEWAY_URL="https://gateway.example.com:8443/v1/",
        GATEWAY_TIMEOUT_SECONDS="3",
        GATEWAY_MAX_BYTES="2048",
        GATEWAY_ALLOW_PRIVATE="yes",
    )
    assert loaded["GATEWAY_URL"] == "https://gateway.example.com:8443/v1"
    assert (loaded["GATEWAY_TIMEOUT_SECONDS"], loaded["GATEWAY_MAX_BYTES"]) == (3, 2048)
    assert loaded["GATEWAY_ALLOW_PRIVATE"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_URL", "gateway.example.com"),
        ("GATEWAY_URL", "ftp://gateway.example.com"),
        ("GATEWAY_URL", "file:///etc/passwd"),
        ("GATEWAY_URL", "http://"),
        ("GATEWAY_URL", "http://gateway.example.com:99999"),
        ("GATEWAY_URL", "http://gateway.example.com:0"),
        ("GATEWAY_URL", "http://[::1"),
        ("GATEWAY_URL", "https://user:secret@gateway.example.com"),
        ("GATEWAY_URL", "https://gateway.example.com/v1?key=1"),
        ("GATEWAY_URL", "https://gateway.example.com/v1#top"),
        ("GATEWAY_TIMEOUT_SECONDS", "soon"),
        ("GATEWAY_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_TIMEOUT_SECONDS", "301"),
        ("GATEWAY_MAX_BYTES", "1MB"),
        ("GATEWAY_MAX_BYTES", "0"),
        ("GATEWAY_ALLOW_PRIVATE", "sometimes"),
    ],
)
def test_a_bad_gateway_value_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=name) as caught:
        _load(monkeypatch, **{name: value})
    assert "secret" not in str(caught.value)  # credentials in a URL are not echoed back
