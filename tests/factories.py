"""factory_boy factories for the models every test needs.

Call `XFactory.create(...)` in tests: it is typed as returning the model (`XFactory(...)` is the
same call, but type checkers see a factory instance).
"""

from __future__ import annotations

import factory
from django.utils import timezone

from threads import services as thread_services
from threads.models import Thread, ThreadMembership, Topic, User


def _grant_defaults(user: User, create: bool, extracted: object, **kwargs: object) -> None:
    if create:
        thread_services.user_grant_defaults(user=user)


def _owner_membership(thread: Thread, create: bool, extracted: object, **kwargs: object) -> None:
    if create and thread.creator is not None:
        ThreadMembership.objects.create(
            thread=thread, user=thread.creator, role=ThreadMembership.Role.OWNER
        )


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.django.Password("pw-secret-123")
    default_permissions = factory.PostGeneration(_grant_defaults)


class TopicFactory(factory.django.DjangoModelFactory[Topic]):
    class Meta:
        model = Topic

    name = factory.Sequence(lambda n: f"Topic {n}")
    slug = factory.Sequence(lambda n: f"topic-{n}")


class ThreadFactory(factory.django.DjangoModelFactory[Thread]):
    """A thread whose `creator` is its owner (pass creator=...)."""

    class Meta:
        model = Thread
        skip_postgeneration_save = True

    title = factory.Sequence(lambda n: f"Thread {n}")
    creator = factory.SubFactory(UserFactory)
    last_activity_at = factory.LazyFunction(timezone.now)
    owner_membership = factory.PostGeneration(_owner_membership)
