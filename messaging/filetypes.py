"""Decide an upload's content type from its bytes and check it against what the client claimed.

A file claiming to be image/png must start like a PNG; a file claiming to be text must decode as
UTF-8; JSON must parse. The stored content type is always one the bytes support.
"""

from __future__ import annotations

import json
import mimetypes
from typing import IO

import filetype

from threads.errors import Invalid

_SNIFF_BYTES = 8192
_GENERIC = {"", "application/octet-stream", "binary/octet-stream"}
_TEXT_TYPES = {
    "application/json",
    "application/xml",
    "application/x-ndjson",
    "application/yaml",
    "application/javascript",
    "image/svg+xml",
}
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-zip-compressed": "application/zip",
}
# Office documents are zip archives; a sniffer that sees "zip" has seen the right bytes.
_ZIP_CONTAINERS = {
    "application/zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/epub+zip",
}


def _is_text_type(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in _TEXT_TYPES


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sniff window may cut a multi-byte character in half at its end.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _claimed_type(name: str, claimed: str) -> str:
    claimed = claimed.split(";", 1)[0].strip().lower()
    claimed = _ALIASES.get(claimed, claimed)
    if claimed in _GENERIC:
        guessed, _ = mimetypes.guess_type(name)
        guessed = _ALIASES.get(guessed or "", guessed or "")
        # A name like "x.bin" guesses the generic type again: that is no claim at all.
        return "" if guessed in _GENERIC else guessed
    return claimed


def resolve_content_type(*, name: str, claimed: str, stream: IO[bytes], size: int) -> str:
    """The content type to store for this upload; Invalid when the bytes contradict the claim."""
    stream.seek(0)
    head = stream.read(_SNIFF_BYTES)
    stream.seek(0)
    sniffed = filetype.guess_mime(head) if head else None
    claimed_type = _claimed_type(name, claimed)

    if not claimed_type:
        if sniffed:
            return str(sniffed)
        return "text/plain" if _looks_like_text(head) else "application/octet-stream"

    if _is_text_type(claimed_type):
        if sniffed or not _looks_like_text(head):
            raise _mismatch(claimed_type, sniffed or "binary data")
        if claimed_type == "application/json":
            try:
                json.loads(stream.read(size).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise Invalid(
                    "The file claims to be JSON but does not parse as JSON.",
                    fields={"file": ["Invalid JSON."]},
                ) from exc
            finally:
                stream.seek(0)
        return claimed_type

    if sniffed == claimed_type:
        return claimed_type
    if sniffed == "application/zip" and claimed_type in _ZIP_CONTAINERS:
        return claimed_type
    if sniffed is None and not _looks_like_text(head) and not _is_known_binary(claimed_type):
        # A binary format the sniffer does not know (e.g. a proprietary one): accept the claim,
        # it is served as a download with nosniff and never rendered inline.
        return claimed_type
    raise _mismatch(
        claimed_type, sniffed or ("text" if _looks_like_text(head) else "unknown binary data")
    )


def _is_known_binary(content_type: str) -> bool:
    """Types the sniffer recognises: for these, 'no match' means the claim is false."""
    return any(kind.mime == content_type for kind in filetype.TYPES)


def _mismatch(claimed: str, actual: str) -> Invalid:
    return Invalid(
        f"The file's bytes do not match its content type: claimed {claimed}, found {actual}.",
        fields={"file": ["Content type does not match the file's bytes."]},
    )
