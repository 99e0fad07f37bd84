"""Login protection (django-axes, chatproject/login_guard.py): backoff, then lockout, per
username and per client address, on the web UI's login and the admin's; unlock by time or by an
operator; and answers that never tell a known username from an unknown one.

Time moves by ageing the attempt records (their attempt_time), never by sleeping."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from django.core.management import call_command
from django.db import connections
from django.test import AsyncClient, Client
from django.test.client import RequestFactory

from chatproject.client_ip import client_ip
from tests.conftest import Cast
from tests.helpers import assert_error

pytestmark = pytest.mark.django_db

PASSWORD = "pw-secret-123"  # tests.factories.UserFactory's
UI = "/login/"
ADMIN = "/admin/login/"
LIMIT = 5  # LOGIN_FAILURE_LIMIT's default
LOCKED = "Too many failed sign-in attempts."


@pytest.fixture
def no_backoff(settings: Any) -> None:
    """Lockout tests post their failures back to back; the backoff has its own tests."""
    settings.LOGIN_BACKOFF_SECONDS = 0


def attempt(
    client: Client, path: str, username: str, password: str | None = None, **extra: Any
) -> Any:
    """One login through `path`; a wrong password unless `password` is given."""
    data = {
        "username": username,
        "password": password or "wrong",
        "next": "/admin/" if path == ADMIN else "/",
    }
    return client.post(path, data, **extra)


def fail(client: Client, path: str, username: str, times: int, **extra: Any) -> list[Any]:
    return [attempt(client, path, username, **extra) for _ in range(times)]


def age(seconds: float) -> None:
    """Move every failure `seconds` into the past, as if that much time had gone by."""
    for row in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=row.pk).update(
            attempt_time=row.attempt_time - timedelta(seconds=seconds)
        )


def login_error(response: Any) -> str:
    found = re.search(r'data-testid="login-error">([^<]*)<', response.content.decode())
    assert found, response.content[:500]
    return found.group(1)


def assert_locked(response: Any, *, at_most: int, at_least: int = 1) -> None:
    assert response.status_code == 429, (response.status_code, response.content[:300])
    assert LOCKED in response.content.decode()
    assert at_least <= int(response["Retry-After"]) <= at_most
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.usefixtures("no_backoff")
@pytest.mark.parametrize("path", [UI, ADMIN])
def test_a_username_is_locked_out_after_the_limit_even_with_the_right_password(
    cast: Cast, path: str
) -> None:
    cast.alice.is_staff = True  # so the admin would let her in
    cast.alice.save()
    client = Client()
    answers = fail(client, path, "alice", LIMIT - 1)
    assert [a.status_code for a in answers] == [200] * (LIMIT - 1)
    # The limit-th failure, and after it the right password too, without a password check.
    assert_locked(attempt(client, path, "alice"), at_least=15 * 60 - 5, at_most=15 * 60)
    assert_locked(attempt(client, path, "alice", PASSWORD), at_least=15 * 60 - 5, at_most=15 * 60)
    assert "_auth_user_id" not in client.session
    # Refused attempts do not count again: still the limit, one record.
    assert [r.failures_since_start for r in AccessAttempt.objects.all()] == [LIMIT]


@pytest.mark.usefixtures("no_backoff")
def test_failures_on_the_ui_and_the_admin_count_together(cast: Cast) -> None:
    client = Client()
    fail(client, UI, "alice", 2)
    fail(client, ADMIN, "alice", 2)
    assert_locked(attempt(client, ADMIN, "alice"), at_most=15 * 60)
    assert_locked(attempt(client, UI, "alice", PASSWORD), at_most=15 * 60)


@pytest.mark.usefixtures("no_backoff")
def test_a_username_is_locked_whichever_addresses_the_guesses_come_from(cast: Cast) -> None:
    client = Client()
    for n in range(LIMIT):
        attempt(client, UI, "alice", REMOTE_ADDR=f"10.0.0.{n + 1}")
    assert_locked(attempt(client, UI, "alice", PASSWORD, REMOTE_ADDR="10.0.1.1"), at_most=900)
    # bob, from a fresh address, is not affected.
    assert attempt(client, UI, "bob", PASSWORD, REMOTE_ADDR="10.0.1.1").status_code == 302


@pytest.mark.usefixtures("no_backoff")
def test_an_address_is_locked_whichever_usernames_it_guesses(cast: Cast) -> None:
    client = Client()
    for name in ["ann", "ben", "cat", "dan", "eve"]:
        attempt(client, UI, name, REMOTE_ADDR="10.0.0.9")
    assert_locked(attempt(client, UI, "bob", PASSWORD, REMOTE_ADDR="10.0.0.9"), at_most=900)
    assert attempt(client, UI, "bob", PASSWORD, REMOTE_ADDR="10.0.0.10").status_code == 302


@pytest.mark.usefixtures("no_backoff")
def test_an_unknown_username_gets_the_same_answers_as_a_wrong_password(cast: Cast) -> None:
    known, unknown = Client(), Client()
    known_answers = fail(known, UI, "alice", LIMIT + 1, REMOTE_ADDR="10.0.0.1")
    unknown_answers = fail(unknown, UI, "nobody", LIMIT + 1, REMOTE_ADDR="10.0.0.2")
    for mine, theirs in zip(known_answers, unknown_answers, strict=True):
        assert mine.status_code == theirs.status_code
    assert login_error(known_answers[0]) == login_error(unknown_answers[0])
    # The lockout page is the same page, byte for byte, with the same wait.
    assert known_answers[-1].status_code == 429
    assert known_answers[-1].content == unknown_answers[-1].content
    assert known_answers[-1]["Retry-After"] == unknown_answers[-1]["Retry-After"]
    assert b"alice" not in known_answers[-1].content


@pytest.mark.usefixtures("no_backoff")
def test_the_lockout_ends_after_the_cool_off(cast: Cast, settings: Any) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    client = Client()
    fail(client, UI, "alice", LIMIT)
    age(14 * 60)
    response = attempt(client, UI, "alice", PASSWORD)
    assert_locked(response, at_least=55, at_most=60)  # a minute left
    assert "Try again in 1 minute," in response.content.decode()
    age(61)
    assert attempt(client, UI, "alice", PASSWORD).status_code == 302
    # The expired failures are gone: a fresh start, not one guess from the next lockout.
    assert not AccessAttempt.objects.exists()


def test_backoff_makes_each_guess_wait_longer_before_the_lockout(cast: Cast) -> None:
    # Defaults: from the 3rd failure the next attempt waits 2 s, then 4 s; the 5th locks.
    client = Client()
    assert [a.status_code for a in fail(client, UI, "alice", 3)] == [200, 200, 200]
    early = attempt(client, UI, "alice", PASSWORD)
    assert_locked(early, at_most=2)
    assert "second" in early.content.decode()
    age(2)
    assert attempt(client, UI, "alice").status_code == 200  # the 4th failure, counted
    age(3)
    assert_locked(attempt(client, UI, "alice", PASSWORD), at_most=1)  # 4 s after the 4th
    age(1)
    # The 5th: the lockout, 15 minutes from now.
    assert_locked(attempt(client, UI, "alice"), at_least=15 * 60 - 5, at_most=15 * 60)
    assert AccessAttempt.objects.get().failures_since_start == LIMIT


def test_a_login_within_the_backoff_limit_goes_through(cast: Cast) -> None:
    client = Client()
    fail(client, UI, "alice", 2)
    assert attempt(client, UI, "alice", PASSWORD).status_code == 302


@pytest.mark.usefixtures("no_backoff")
def test_an_admin_sees_the_lockout_and_clears_it(cast: Cast) -> None:
    fail(Client(), UI, "alice", LIMIT)
    admin = Client()
    admin.force_login(cast.admin)
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert b"alice" in listing.content
    attempt_row = AccessAttempt.objects.get(username="alice")
    cleared = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [attempt_row.pk], "post": "yes"},
    )
    assert cleared.status_code == 302
    assert not AccessAttempt.objects.exists()
    assert attempt(Client(), UI, "alice", PASSWORD).status_code == 302


@pytest.mark.usefixtures("no_backoff")
def test_an_operator_clears_a_username_from_the_command_line(cast: Cast) -> None:
    fail(Client(), UI, "alice", LIMIT)
    call_command("axes_reset_username", "alice")
    assert attempt(Client(), UI, "alice", PASSWORD).status_code == 302


@pytest.mark.usefixtures("no_backoff")
def test_a_json_client_gets_the_one_error_shape(cast: Cast) -> None:
    client = Client()
    fail(client, UI, "alice", LIMIT)
    response = attempt(client, UI, "alice", PASSWORD, HTTP_ACCEPT="application/json")
    body = assert_error(response, 429, "login_locked")
    assert body["message"].startswith(LOCKED)
    assert 1 <= int(response["Retry-After"]) <= 15 * 60


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_backoff")
async def test_the_lockout_holds_on_the_async_path_daphne_takes(cast: Cast) -> None:
    client = AsyncClient()
    data = {"username": "alice", "password": "wrong", "next": "/"}
    statuses = [(await client.post(UI, data)).status_code for _ in range(LIMIT)]
    assert statuses == [200] * (LIMIT - 1) + [429]
    locked = await client.post(UI, {**data, "password": PASSWORD})
    assert_locked(locked, at_most=15 * 60)
    # sync_to_async ran the ORM on one long-lived thread; let its connection go so the test
    # database can be flushed and dropped (as tests/messaging/test_consumers.py does).
    await sync_to_async(connections.close_all)()


# --- the client address: a proxy's header only when the operator trusts the proxy ---------------


@pytest.mark.usefixtures("no_backoff")
def test_x_forwarded_for_is_ignored_unless_a_proxy_is_trusted(cast: Cast) -> None:
    client = Client()
    # A guesser rotating a forged header is still one address (REMOTE_ADDR) to the lockout.
    for n, name in enumerate(["ann", "ben", "cat", "dan", "eve"]):
        attempt(client, UI, name, REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.0.0.9"}
    forged = attempt(
        client, UI, "bob", PASSWORD, REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="192.0.2.77"
    )
    assert forged.status_code == 429


@pytest.mark.usefixtures("no_backoff")
def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(
    cast: Cast, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    client = Client()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}  # every request arrives from the proxy
    for name in ["ann", "ben", "cat", "dan", "eve"]:
        attempt(client, UI, name, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.5"}
    locked = attempt(client, UI, "bob", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)
    assert locked.status_code == 429
    # Another client behind the same proxy is not locked out with the first.
    other = attempt(client, UI, "bob", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.6", **proxy)
    assert other.status_code == 302


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "", "10.0.0.1"),
        (0, "203.0.113.5", "10.0.0.1"),
        (1, "", "10.0.0.1"),
        (1, "203.0.113.5", "203.0.113.5"),
        # What the client wrote itself (left of what the proxy appended) is never used.
        (1, "198.51.100.7, 203.0.113.5", "203.0.113.5"),
        (2, "198.51.100.7, 203.0.113.5, 10.1.1.1", "203.0.113.5"),
        (3, "203.0.113.5", "203.0.113.5"),  # fewer entries than proxies: the leftmost
        (1, "not-an-address", "10.0.0.1"),
        (1, "2001:DB8::1", "2001:db8::1"),
    ],
)
def test_client_ip(settings: Any, trusted: int, forwarded: str, expected: str) -> None:
    settings.TRUSTED_PROXY_COUNT = trusted
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_an_unknown_remote_address_is_none(settings: Any) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR="")
    assert client_ip(request) is None
