"""The web UI's server side: the login page, the application shell and its security headers.
What the page does in a browser is tested in tests/e2e/ (headless Chromium)."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from tests.conftest import Cast

pytestmark = pytest.mark.django_db


def test_the_app_sends_anonymous_visitors_to_the_login_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_login_page_renders_a_form_under_a_strict_csp() -> None:
    response = Client().get("/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'name="username"' in body and 'name="password"' in body
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp


def test_logging_in_opens_the_app_and_a_bad_password_says_so(cast: Cast) -> None:
    cast.alice.set_password("correct horse")
    cast.alice.save()
    client = Client()
    bad = client.post("/login/", {"username": "alice", "password": "wrong", "next": "/"})
    assert bad.status_code == 200
    assert b"did not match" in bad.content
    good = client.post("/login/", {"username": "alice", "password": "correct horse", "next": "/"})
    assert good.status_code == 302
    assert good["Location"] == "/"
    app = client.get("/")
    assert app.status_code == 200
    assert b"alice" in app.content


def test_the_app_shell_carries_its_config_as_data_and_no_inline_script(cast: Cast) -> None:
    client = Client()
    client.force_login(cast.alice)
    response = client.get("/")
    body = response.content.decode()
    config = re.search(r'<script id="tl-config" type="application/json">(.*?)</script>', body)
    assert config is not None
    values = json.loads(config.group(1))
    assert values["maxFileMb"] >= 1
    assert values["maxFileBytes"] == values["maxFileMb"] * 1024 * 1024
    # Every other script is an external file from /static/: the CSP forbids inline code.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", body, re.S)
    for attributes, content in scripts:
        if 'type="application/json"' in attributes:
            continue
        assert 'src="/static/' in attributes
        assert content.strip() == ""
    assert response["Content-Security-Policy"].startswith("default-src 'self'")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    assert "csrftoken" in response.cookies


def test_the_user_name_in_the_page_is_escaped(cast: Cast) -> None:
    cast.alice.username = "<img src=x onerror=alert(1)>"
    cast.alice.save()
    client = Client()
    client.force_login(cast.alice)
    body = client.get("/").content.decode()
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_logout_is_a_post_and_ends_the_session(cast: Cast) -> None:
    client = Client()
    client.force_login(cast.alice)
    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get("/").status_code == 302


def test_static_assets_are_vendored_not_fetched_from_a_cdn() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pages = [*(root / "templates" / "web").glob("*.html")]
    assert pages
    for page in pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page
    for asset in ("app/main.js", "app.css", "vendor/marked.min.js", "vendor/purify.min.js"):
        assert (root / "static" / "threadline" / asset).is_file(), asset
