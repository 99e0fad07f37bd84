"""The production security profile: HTTPS behind a proxy, HSTS, secure cookies, the login
protection's knobs, and `manage.py check --deploy` clean with the environment the README
documents. The embedded default (no environment) keeps serving plain http://127.0.0.1."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from tests.helpers import load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_production_env() -> dict[str, str]:
    """The KEY=value lines of the README's production block, comments dropped."""
    block = re.search(
        r"<!-- production-env.*?-->\s*```sh\n(.*?)```\s*<!-- /production-env -->",
        README.read_text(),
        re.S,
    )
    assert block, "README.md lost its production-env block"
    env = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(\S*)", block.group(1), re.M))
    assert env, "the production-env block has no variables"
    return env


def run_check_deploy(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Only what the OS needs from this process: none of its Django, database or test settings.
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT"}}
    full = {
        **base,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "VAR_DIR": str(tmp_path / "var"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_reports_no_issues_with_the_documented_environment(tmp_path: Path) -> None:
    env = readme_production_env()
    assert env["DEBUG"] == "0"
    assert "SECRET_KEY_FILE" in env  # the README points at a file; the test writes a real one
    key_file = tmp_path / "secret_key"
    key_file.write_text(secrets.token_urlsafe(50))  # 67 characters, as the README suggests
    env["SECRET_KEY_FILE"] = str(key_file)
    result = run_check_deploy(env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no issues" in output, output


def test_check_deploy_does_warn_without_the_https_switches(tmp_path: Path) -> None:
    """The measurement of issue 15: DEBUG off, a real key and hosts, but no HTTPS profile."""
    env = {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "chat.example.com",
    }
    result = run_check_deploy(env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in output, output


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    return load_settings(monkeypatch, env)


def test_the_embedded_default_serves_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load(monkeypatch)
    assert "SECURE_PROXY_SSL_HEADER" not in loaded
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SESSION_COOKIE_SECURE"] is False
    assert loaded["CSRF_COOKIE_SECURE"] is False
    assert loaded["SECURE_HSTS_SECONDS"] == 0
    assert loaded["TRUSTED_PROXY_COUNT"] == 0
    assert loaded["REST_FRAMEWORK"]["NUM_PROXIES"] == 0


def test_behind_an_https_proxy_turns_on_the_secure_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = _load(monkeypatch, BEHIND_HTTPS_PROXY="1")
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert loaded["SECURE_SSL_REDIRECT"] is True
    assert loaded["SESSION_COOKIE_SECURE"] is True
    assert loaded["CSRF_COOKIE_SECURE"] is True
    assert loaded["SECURE_HSTS_SECONDS"] == 0  # HSTS is sticky in browsers: only when asked


def test_each_https_switch_can_be_set_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _load(
        monkeypatch,
        BEHIND_HTTPS_PROXY="1",
        SECURE_SSL_REDIRECT="0",
        CSRF_COOKIE_SECURE="0",
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        SECURE_HSTS_PRELOAD="true",
        CSRF_TRUSTED_ORIGINS="https://chat.example.com, https://admin.example.com",
        TRUSTED_PROXY_COUNT="2",
    )
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert (loaded["SESSION_COOKIE_SECURE"], loaded["CSRF_COOKIE_SECURE"]) == (True, False)
    assert loaded["SECURE_HSTS_SECONDS"] == 3600
    assert loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert loaded["SECURE_HSTS_PRELOAD"] is True
    assert loaded["CSRF_TRUSTED_ORIGINS"] == [
        "https://chat.example.com",
        "https://admin.example.com",
    ]
    assert loaded["TRUSTED_PROXY_COUNT"] == 2
    assert loaded["REST_FRAMEWORK"]["NUM_PROXIES"] == 2


def test_the_login_protection_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _load(monkeypatch)
    assert defaults["AXES_FAILURE_LIMIT"] == 5
    assert defaults["AXES_COOLOFF_TIME"] == timedelta(minutes=15)
    assert (defaults["LOGIN_BACKOFF_AFTER"], defaults["LOGIN_BACKOFF_SECONDS"]) == (3, 2)
    assert defaults["AXES_ENABLED"] is True
    assert defaults["AXES_LOCKOUT_PARAMETERS"] == ["username", "ip_address"]
    loaded = _load(
        monkeypatch,
        LOGIN_FAILURE_LIMIT="10",
        LOGIN_COOLOFF_MINUTES="60",
        LOGIN_BACKOFF_SECONDS="0",
        LOGIN_PROTECTION="0",
    )
    assert loaded["AXES_FAILURE_LIMIT"] == 10
    assert loaded["AXES_COOLOFF_TIME"] == timedelta(hours=1)
    assert loaded["LOGIN_BACKOFF_SECONDS"] == 0
    assert loaded["AXES_ENABLED"] is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOGIN_FAILURE_LIMIT", "0", "LOGIN_FAILURE_LIMIT must be at least 1"),
        ("LOGIN_COOLOFF_MINUTES", "soon", "LOGIN_COOLOFF_MINUTES must be an integer"),
        ("TRUSTED_PROXY_COUNT", "-1", "TRUSTED_PROXY_COUNT must be at least 0"),
        ("SECURE_HSTS_SECONDS", "a year", "SECURE_HSTS_SECONDS must be an integer"),
        ("BEHIND_HTTPS_PROXY", "maybe", "BEHIND_HTTPS_PROXY must be a boolean"),
        ("CSRF_TRUSTED_ORIGINS", "chat.example.com", "CSRF_TRUSTED_ORIGINS entries need a scheme"),
    ],
)
def test_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        _load(monkeypatch, **{name: value})


@pytest.mark.django_db
def test_behind_the_proxy_http_is_redirected_but_health_checks_are_not(settings: Any) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()
    plain = client.get("/login/", HTTP_X_FORWARDED_PROTO="http")
    assert plain.status_code == 301
    assert plain["Location"] == "https://testserver/login/"
    secure = client.get("/login/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=3600"
    assert client.get("/healthz").status_code == 200
