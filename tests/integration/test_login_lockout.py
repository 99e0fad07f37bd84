"""The login lockout is one count across processes: failures on two daphne servers sharing one
PostgreSQL database add up to one limit, and the lockout holds on both.

The servers run the real settings (LOGIN_FAILURE_LIMIT 5, backoff from the 3rd failure) and see
every request from 127.0.0.1; no other integration test signs in with a password, so locking
that address here disturbs none of them."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.integration.conftest import Live, Server

pytestmark = pytest.mark.integration

LIMIT = 5


def login(server: Server, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.http, timeout=10) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, page.text[:500]
        return client.post(
            "/login/",
            data={
                "csrfmiddlewaretoken": token.group(1),
                "username": username,
                "password": password,
                "next": "/",
            },
            headers={"Referer": f"{server.http}/login/"},
        )


def test_failures_on_two_servers_count_as_one(live: Live) -> None:
    name = "lockout-across-processes"  # unknown usernames count like known ones
    answers: list[tuple[str, int]] = []
    for n in range(LIMIT):
        server = live.a if n % 2 == 0 else live.b
        response = login(server, name, "wrong")
        if response.status_code == 429 and int(response.headers["Retry-After"]) <= 4:
            # The backoff after the 3rd and 4th failures (2 s, 4 s), set by the failures the
            # other server counted: wait as a patient guesser would, then guess again.
            answers.append((server.name, 429))
            time.sleep(int(response.headers["Retry-After"]))
            response = login(server, name, "wrong")
        answers.append((server.name, response.status_code))
    # Five failures alternating over the two servers; the fifth is the lockout.
    assert answers == [
        ("a", 200),
        ("b", 200),
        ("a", 200),
        ("b", 429),  # backoff
        ("b", 200),
        ("a", 429),  # backoff
        ("a", 429),  # the lockout
    ], answers
    for server in (live.a, live.b):
        locked = login(server, name, "wrong")
        assert locked.status_code == 429
        assert "Too many failed sign-in attempts" in locked.text
        assert 14 * 60 < int(locked.headers["Retry-After"]) <= 15 * 60
