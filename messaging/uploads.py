"""Bounding an upload while Django parses it, so an oversize file is refused as it arrives."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import (
    FileUploadHandler,
    MemoryFileUploadHandler,
    TemporaryFileUploadHandler,
)
from django.http import HttpRequest

from threads.errors import Invalid, TooLarge


def upload_limit_bytes() -> int:
    return int(settings.MAX_FILE_SIZE_MB) * 1024 * 1024


# Multipart framing (boundaries, part headers, small fields) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def upload_request_limit_bytes() -> int:
    """The largest request body an upload may have."""
    return upload_limit_bytes() + MULTIPART_OVERHEAD


def too_large() -> TooLarge:
    return TooLarge(f"Files are limited to {settings.MAX_FILE_SIZE_MB} MB.")


class SizeLimitUploadHandler(FileUploadHandler):
    """Counts the bytes of each file part and stops the parse at the limit.

    Raising here (rather than StopUpload) propagates out of the parser, so the view answers
    413 without reading the rest of the body.
    """

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.received = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        self.received = 0
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > upload_limit_bytes():
            raise too_large()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def upload_limit_install(request: HttpRequest) -> None:
    """Bound the upload this request carries, before a byte of its body is read: refuse by the
    declared length at once, and stop the parse at the limit for bodies that lie about their
    length or do not declare one. Every upload door calls this before touching the body."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise Invalid("Content-Length must be an integer.") from None
    if declared > upload_request_limit_bytes():
        raise too_large()
    request.upload_handlers = [
        SizeLimitUploadHandler(request),
        MemoryFileUploadHandler(request),
        TemporaryFileUploadHandler(request),
    ]
