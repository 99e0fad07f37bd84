"""factory_boy factories for the models every test needs."""

from __future__ import annotations

import factory
from django.utils import timezone

from threads import services as thread_services
from threads.models import Thread, ThreadMembership, Topic, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.django.Password("pw-secret-123")

    @factory.post_generation
    def default_permissions(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            thread_services.user_grant_defaults(user=self)


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic

    name = factory.Sequence(lambda n: f"Topic {n}")
    slug = factory.Sequence(lambda n: f"topic-{n}")


class ThreadFactory(factory.django.DjangoModelFactory):
    """A thread whose `creator` is its owner (pass creator=...)."""

    class Meta:
        model = Thread
        skip_postgeneration_save = True

    title = factory.Sequence(lambda n: f"Thread {n}")
    creator = factory.SubFactory(UserFactory)
    last_activity_at = factory.LazyFunction(timezone.now)

    @factory.post_generation
    def owner_membership(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create and self.creator is not None:
            ThreadMembership.objects.create(
                thread=self, user=self.creator, role=ThreadMembership.Role.OWNER
            )
