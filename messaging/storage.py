"""Stored objects (attachments now, AI artifacts later) on whichever storage STORAGES names:
FileSystemStorage under MEDIA_ROOT in the embedded profile, S3-compatible object storage
(django-storages' S3Storage) with USE_S3.

The two things that differ between them live here: how a client downloads an object (a
presigned URL straight from the bucket, or bytes streamed by us) and removing objects once the
rows that named them are gone for good.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage
from django.db import transaction
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

logger = logging.getLogger(__name__)


def download_url(file_field: FieldFile, *, filename: str, content_type: str) -> str | None:
    """A presigned GET URL for the stored object, or None when we serve the bytes ourselves.

    On S3 the URL expires within PRESIGNED_URL_MAX_SECONDS (the storage's querystring_expire,
    never more) and makes the bucket answer as an attachment named `filename` with
    `content_type`, as our own download does, so the bytes never render as a page.
    """
    storage = file_field.storage
    if isinstance(storage, FileSystemStorage):
        return None
    # Imported here: it imports boto3, which only S3 deployments need to pay for.
    from storages.backends.s3 import S3Storage

    if not isinstance(storage, S3Storage):
        return None  # another backend: the caller streams through storage.open()
    expire = min(int(storage.querystring_expire), settings.PRESIGNED_URL_MAX_SECONDS)
    url: str = storage.url(
        file_field.name,
        parameters={
            "ResponseContentDisposition": content_disposition_header(True, filename),
            "ResponseContentType": content_type,
        },
        expire=expire,
    )
    return url


def objects_delete_on_commit(objects: Iterable[tuple[Storage, str]]) -> None:
    """Remove stored objects once the current transaction commits (at once outside one).

    Call it in the transaction that deleted the rows naming them: a rollback then leaves every
    object in place, never a row pointing at missing bytes. A failed removal is logged and the
    rest still go; the rows are already gone, so an object left behind is garbage, not a broken
    reference, and the request that deleted the rows must not fail for it.
    """
    pending = [(storage, name) for storage, name in objects if name]
    if not pending:
        return

    def remove() -> None:
        for storage, name in pending:
            try:
                storage.delete(name)
            except Exception:
                logger.exception("could not remove stored object %s", name)

    transaction.on_commit(remove)


def download_response(
    file_field: FieldFile, *, filename: str, content_type: str, inline: bool = False
) -> HttpResponseBase:
    """The answer to a download: a redirect to a presigned URL on object storage, else the
    bytes, as an attachment unless `inline`. Never active content in our origin either way."""
    url = download_url(file_field, filename=filename, content_type=content_type)
    if url is not None:
        redirect = HttpResponseRedirect(url)
        # The URL is a short-lived credential for this user: no cache may keep or share it.
        redirect["Cache-Control"] = "private, no-store"
        return redirect
    response = FileResponse(
        file_field.open("rb"),
        as_attachment=not inline,
        filename=filename,
        content_type=content_type,
    )
    # Even a file that is really HTML or SVG must never run in our origin.
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    return response
