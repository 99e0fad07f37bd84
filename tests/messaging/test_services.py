"""messaging.services: thread deletion with its files, and seq under concurrent posts."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import connection

from messaging.models import File, Message
from messaging.services import file_create, file_delete, message_post, thread_delete
from tests.conftest import Cast
from tests.factories import ThreadFactory, UserFactory
from tests.helpers import API, CSV_BYTES, IS_POSTGRES, post
from threads.models import Thread, User


def _file(owner: User, name: str = "a.csv") -> File:
    return file_create(
        owner=owner,
        name=name,
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )


def _blob_exists(file: File) -> bool:
    return default_storage.exists(file.content.name)


@pytest.mark.django_db
def test_deleting_a_thread_deletes_its_messages_and_its_only_files(
    cast: Cast, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    only_here = _file(cast.alice, "only-here.csv")
    bobs = _file(cast.bob, "bobs.csv")
    unattached = _file(cast.alice, "unattached.csv")
    post(cast.thread, cast.alice, "one", file_ids=[only_here.pk])
    post(cast.thread, cast.bob, "two", file_ids=[bobs.pk])
    post(cast.thread, cast.alice, "three", file_ids=[only_here.pk])
    other = ThreadFactory.create(creator=cast.alice)
    kept = post(other, cast.alice, "elsewhere")
    assert all(_blob_exists(file) for file in (only_here, bobs, unattached))

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.alice).delete(f"{API}/threads/{cast.thread.pk}/")

    assert response.status_code == 204
    assert not Thread.objects.filter(pk=cast.thread.pk).exists()
    assert not Message.objects.filter(thread_id=cast.thread.pk).exists()
    assert list(Message.objects.all()) == [kept]
    assert list(File.objects.all()) == [unattached]
    assert not _blob_exists(only_here)
    assert not _blob_exists(bobs)
    assert _blob_exists(unattached)


@pytest.mark.django_db
def test_blobs_are_removed_only_when_the_delete_commits(
    cast: Cast, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    file = _file(cast.alice)
    post(cast.thread, cast.alice, "x", file_ids=[file.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        thread_delete(thread=cast.thread)
    assert not File.objects.filter(pk=file.pk).exists()
    assert _blob_exists(file), "the blob went before the transaction committed"
    assert callbacks
    for callback in callbacks:
        callback()
    assert not _blob_exists(file)


@pytest.mark.django_db
def test_deleting_a_thread_keeps_a_file_also_attached_in_another_thread(
    cast: Cast, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    shared = _file(cast.alice, "shared.csv")
    post(cast.thread, cast.alice, "here", file_ids=[shared.pk])
    other = ThreadFactory.create(creator=cast.alice)
    elsewhere = post(other, cast.alice, "there", file_ids=[shared.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.alice).delete(f"{API}/threads/{cast.thread.pk}/")

    assert response.status_code == 204
    assert File.objects.filter(pk=shared.pk).exists()
    assert list(elsewhere.files.all()) == [shared]
    assert _blob_exists(shared)


@pytest.mark.django_db
def test_file_delete_removes_rows_then_objects_after_commit(
    cast: Cast, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    first, second, kept = _file(cast.alice, "1.csv"), _file(cast.bob, "2.csv"), _file(cast.alice)
    post(cast.thread, cast.alice, "x", file_ids=[first.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        file_delete(files=[first, second])
    assert list(File.objects.all()) == [kept]
    assert _blob_exists(first) and _blob_exists(second)
    for callback in callbacks:
        callback()
    assert not _blob_exists(first) and not _blob_exists(second)
    assert _blob_exists(kept)
    assert cast.thread.messages.get().file_ids == []


@pytest.mark.django_db
def test_an_object_that_cannot_be_removed_is_logged_and_the_rest_still_go(
    cast: Cast,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck, gone = _file(cast.alice, "stuck.csv"), _file(cast.alice, "gone.csv")
    post(cast.thread, cast.alice, "x", file_ids=[stuck.pk, gone.pk])
    storage = stuck.content.storage
    real_delete = storage.delete

    def flaky_delete(name: str) -> None:
        if name == stuck.content.name:
            raise OSError("bucket unreachable")
        real_delete(name)

    monkeypatch.setattr(storage, "delete", flaky_delete)
    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.alice).delete(f"{API}/threads/{cast.thread.pk}/")
    assert response.status_code == 204
    assert not _blob_exists(gone)
    assert _blob_exists(stuck)
    assert f"could not remove stored object {stuck.content.name}" in caplog.text


@pytest.mark.django_db
def test_message_post_numbers_messages_per_thread(cast: Cast) -> None:
    other = ThreadFactory.create(creator=cast.alice)
    assert [post(cast.thread, cast.alice).seq for _ in range(3)] == [1, 2, 3]
    assert post(other, cast.alice).seq == 1
    cast.thread.refresh_from_db()
    assert cast.thread.last_message_seq == 3


@pytest.mark.skipif(
    not IS_POSTGRES, reason="concurrent writers need PostgreSQL; SQLite serialises all writes"
)
@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_get_seqs_one_to_forty_without_gaps_or_duplicates() -> None:
    author = UserFactory.create(username="writer")
    thread = ThreadFactory.create(creator=author)
    workers, per_worker = 4, 10
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for number in range(per_worker):
                message_post(
                    thread=Thread.objects.get(pk=thread.pk),
                    author=author,
                    text=f"w{index}-{number}",
                )
        except BaseException as exc:  # reported below, with the thread's own traceback lost
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for worker in pool:
        worker.start()
    for worker in pool:
        worker.join()

    assert errors == []
    seqs = sorted(Message.objects.filter(thread=thread).values_list("seq", flat=True))
    assert seqs == list(range(1, workers * per_worker + 1))
    thread.refresh_from_db()
    assert thread.last_message_seq == workers * per_worker
