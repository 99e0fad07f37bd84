"""A rate limit is one count across processes: two daphne servers sharing one Redis refuse the
user's fourth post of a 3-a-day limit, wherever each post lands, not the seventh.

The shared `live` servers run with RATE_LIMITS off; this test starts two more on the same
database and Redis with the limit on (posts 3/d: a day-long window, so that no window ends
during the test; the counters are keyed by the user's id, new in each run's database)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Live, Server, _start_daphne, _stop, _wait_healthy

pytestmark = pytest.mark.integration

LIMIT = 3


@pytest.fixture
def limited(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    env = dict(live.env)
    env.update(
        RATE_LIMITS="1",
        RATE_LIMIT_POSTS=f"{LIMIT}/d",
        # Only the one limit under test: everything here comes from 127.0.0.1.
        RATE_LIMIT_IP_REQUESTS="off",
        RATE_LIMIT_IP_WS_CONNECTS="off",
    )
    logs = tmp_path_factory.mktemp("rate-limited-servers")
    servers = [_start_daphne(name, env, logs) for name in ("limited-a", "limited-b")]
    try:
        for server in servers:
            _wait_healthy(server)
        yield servers
    finally:
        for server in servers:
            _stop(server)


def test_two_servers_sharing_redis_enforce_one_limit(live: Live, limited: list[Server]) -> None:
    headers = live.headers("alice")
    created = httpx.post(
        f"{limited[0].http}/api/v1/threads/", json={"title": "Counted"}, headers=headers, timeout=10
    )
    assert created.status_code == 201, created.text
    thread_id = created.json()["id"]

    answers = []
    for n in range(2 * LIMIT):
        server = limited[n % 2]
        response = httpx.post(
            f"{server.http}/api/v1/threads/{thread_id}/messages/",
            json={"text": f"post {n}"},
            headers=headers,
            timeout=10,
        )
        answers.append((server.name, response.status_code))
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert int(response.headers["Retry-After"]) >= 1

    # One count of three over both servers; two separate counts would have taken all six.
    assert answers == [
        ("limited-a", 201),
        ("limited-b", 201),
        ("limited-a", 201),
        ("limited-b", 429),
        ("limited-a", 429),
        ("limited-b", 429),
    ], answers
    # Bob's count is his own.
    bob = httpx.post(
        f"{limited[1].http}/api/v1/threads/",
        json={"title": "Bob's"},
        headers=live.headers("bob"),
        timeout=10,
    )
    assert bob.status_code == 201, bob.text
    bobs_post = httpx.post(
        f"{limited[1].http}/api/v1/threads/{bob.json()['id']}/messages/",
        json={"text": "mine"},
        headers=live.headers("bob"),
        timeout=10,
    )
    assert bobs_post.status_code == 201, bobs_post.text
