from __future__ import annotations

from django.conf import settings
from django.db import models

from threads.ids import ID_MAX_LENGTH, new_file_id, new_message_id
from threads.models import Thread


def _file_upload_path(instance: File, filename: str) -> str:
    # The stored name is the id alone: a user's file name never becomes a path on disk or a key
    # in a bucket. The original name lives in File.name.
    return f"files/{instance.created_at:%Y/%m}/{instance.pk}"


class File(models.Model):
    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_file_id)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="files"
    )
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=150)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content = models.FileField(upload_to=_file_upload_path, max_length=255)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class Message(models.Model):
    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        QUEUED = "queued", "Queued"
        STREAMING = "streaming", "Streaming"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_message_id)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="messages")
    # Empty for messages written by the AI.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="messages",
    )
    seq = models.BigIntegerField(help_text="Per-thread, monotonic; the keyset for paging.")
    text = models.TextField(blank=True, default="")
    files = models.ManyToManyField(File, blank=True, related_name="messages")
    meta = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.COMPLETE)
    edited = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    # The attached file ids: set by message_post, loaded on first use otherwise. (History pages
    # do not use model instances; see selectors.MessageRow.)
    _file_ids: list[str] | None = None

    class Meta:
        ordering = ["thread", "seq"]
        constraints = [
            # Also the index every history page walks: (thread_id, seq) keyset pagination.
            models.UniqueConstraint(fields=["thread", "seq"], name="message_thread_seq_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.id} #{self.seq} in {self.thread_id}"

    @property
    def file_ids(self) -> list[str]:
        if self._file_ids is None:
            self._file_ids = list(
                Message.files.through.objects.filter(message_id=self.pk)
                .order_by("id")
                .values_list("file_id", flat=True)
            )
        return self._file_ids


class ThreadEvent(models.Model):
    """The recent event log of a thread: what a reconnecting client missed.

    Written in the same transaction as the change it describes, so the log never disagrees
    with the database and its order is the commit order; pruned to the newest
    EVENT_LOG_KEEP events per thread (messaging.events)."""

    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=40)
    data = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["thread", "seq"], name="event_thread_seq_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} in {self.thread_id}"
