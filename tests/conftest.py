"""The cast every permission test uses.

alice (owner), bob (member), charlie (outsider), an admin.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from tests.factories import ThreadFactory, UserFactory
from threads import services as thread_services
from threads.models import Thread, ThreadMembership, User


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    """Every test starts with an empty cache: rate-limit counters, the group-limit cache and
    budget figures live there, and one test's counts must not refuse the next test's request."""
    from django.core.cache import caches

    # Every configured cache, not only those this thread has opened: the ASGI tests count on
    # worker threads, whose cache objects this one never sees (LocMem's data is shared).
    for cache in caches.all():
        cache.clear()


@dataclass
class Cast:
    alice: User
    bob: User
    charlie: User
    admin: User
    thread: Thread

    def client(self, user: User | None) -> APIClient:
        """An API client authenticated with a real bearer token (None: anonymous)."""
        client = APIClient()
        if user is not None:
            _, raw = thread_services.token_issue(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client


@pytest.fixture
def cast(db: None) -> Cast:
    alice = UserFactory.create(username="alice")
    bob = UserFactory.create(username="bob")
    charlie = UserFactory.create(username="charlie")
    admin = UserFactory.create(username="admin", is_superuser=True, is_staff=True)
    thread = ThreadFactory.create(creator=alice, title="Alice's thread")
    ThreadMembership.objects.create(thread=thread, user=bob, role=ThreadMembership.Role.MEMBER)
    return Cast(alice=alice, bob=bob, charlie=charlie, admin=admin, thread=thread)
