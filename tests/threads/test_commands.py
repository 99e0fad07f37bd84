"""The issue_token and bootstrap_demo management commands."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from rest_framework.test import APIClient

from tests.conftest import Cast
from tests.helpers import API, CHAT_PERMS
from threads.models import DEFAULT_GROUP_NAME, ApiToken, User

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _me_with(token: str) -> dict[str, object]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get(f"{API}/me/")
    assert response.status_code == 200
    return response.json()


def test_issue_token_prints_a_working_token(cast: Cast) -> None:
    token = _run("issue_token", "alice", "--name", "ci").strip()
    assert re.fullmatch(r"tl_[A-Za-z0-9_-]+", token)
    assert _me_with(token)["username"] == "alice"
    assert ApiToken.objects.get(user=cast.alice).name == "ci"


def test_issue_token_for_an_unknown_user_needs_create(db: None) -> None:
    with pytest.raises(CommandError, match="No user 'ghost'; pass --create"):
        _run("issue_token", "ghost")
    assert not User.objects.filter(username="ghost").exists()
    assert not ApiToken.objects.exists()


def test_issue_token_create_makes_a_user_with_the_default_permissions(db: None) -> None:
    token = _run("issue_token", "newbie", "--create").strip()
    user = User.objects.get(username="newbie")
    assert list(user.groups.values_list("name", flat=True)) == [DEFAULT_GROUP_NAME]
    assert not user.has_usable_password()
    assert not user.is_superuser
    me = _me_with(token)
    assert me["permissions"] == list(CHAT_PERMS)
    assert me["isAdmin"] is False


def test_bootstrap_demo_creates_the_admin_once_and_prints_a_token_each_run(
    db: None, tmp_path: Path
) -> None:
    with override_settings(VAR_DIR=tmp_path):
        first = _run("bootstrap_demo", "--url", "http://127.0.0.1:9000")
        second = _run("bootstrap_demo", "--url", "http://127.0.0.1:9000")
    assert User.objects.filter(username="demo").count() == 1
    demo = User.objects.get(username="demo")
    assert demo.is_superuser and demo.is_staff
    assert demo.groups.filter(name=DEFAULT_GROUP_NAME).exists()

    password = (tmp_path / "demo_password").read_text().strip()
    assert demo.check_password(password)
    assert (tmp_path / "demo_password").stat().st_mode & 0o777 == 0o600

    tokens = [re.search(r"token:\s+(\S+)", out).group(1) for out in (first, second)]  # type: ignore[union-attr]
    assert tokens[0] != tokens[1]
    for out, token in zip((first, second), tokens, strict=True):
        assert f"with password {password!r}" in out
        assert "http://127.0.0.1:9000/api/v1/docs/" in out
        me = _me_with(token)
        assert me["username"] == "demo"
        assert me["isAdmin"] is True
    assert ApiToken.objects.filter(user=demo).count() == 2


def test_bootstrap_demo_does_not_touch_an_existing_user(cast: Cast, tmp_path: Path) -> None:
    with override_settings(VAR_DIR=tmp_path):
        out = _run("bootstrap_demo", "--username", "alice")
    cast.alice.refresh_from_db()
    assert not cast.alice.is_superuser
    assert cast.alice.check_password("pw-secret-123")
    assert "(your own password)" in out
    assert not (tmp_path / "alice_password").exists()
