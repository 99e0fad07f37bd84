"""Reads for messages and files."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from messaging.livetext import live_texts
from messaging.models import File, Message
from threads.errors import Forbidden, Invalid, NotFound
from threads.ids import is_valid_client_id
from threads.models import Thread, ThreadMembership, User
from threads.permissions import Perm, has_perm, require_perm
from threads.selectors import access_thread, is_thread_owner

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser
    from django.db.models.query import RawQuerySet

MESSAGE_NOT_FOUND = "Message not found."
FILE_NOT_FOUND = "File not found."
MAX_PAGE_SIZE = 200


@dataclass(slots=True)
class MessageRow:
    """A message as a history page shows it: plain values. Building 200 model instances cost
    more than the page's query, so pages are read with values_list into these."""

    id: str
    thread_id: str
    seq: int
    author_id: str | None
    text: str
    meta: dict[str, Any]
    status: str
    edited: bool
    created_at: datetime
    updated_at: datetime
    file_ids: list[str] = field(default_factory=list)


_ROW_FIELDS = tuple(f.name for f in fields(MessageRow) if f.name != "file_ids")


@dataclass(frozen=True)
class MessagePage:
    messages: list[MessageRow]
    has_older: bool
    has_newer: bool


def _messages(thread: Thread) -> QuerySet[Message]:
    return Message.objects.filter(thread=thread)


def _page_rows(queryset: QuerySet[Message], limit: int) -> list[MessageRow]:
    return [MessageRow(*values) for values in queryset.values_list(*_ROW_FIELDS)[:limit]]


def attach_file_ids(rows: list[MessageRow]) -> list[MessageRow]:
    """Load every row's file ids with one query on the link table."""
    by_message: dict[str, list[str]] = defaultdict(list)
    if rows:
        links = (
            Message.files.through.objects.filter(message_id__in=[row.id for row in rows])
            .order_by("id")
            .values_list("message_id", "file_id")
        )
        for message_id, file_id in links:
            by_message[message_id].append(file_id)
    for row in rows:
        row.file_ids = by_message.get(row.id, [])
    return rows


def message_page(
    *, thread: Thread, before: int | None = None, after: int | None = None, limit: int = 50
) -> MessagePage:
    """A page of messages, oldest first, walked by the (thread, seq) index in either direction.

    No cursor: the newest `limit`. `before=S`: the `limit` messages just older than seq S.
    `after=S`: the `limit` messages just newer than S. Each page costs one index range scan,
    whatever its depth.
    """
    if before is not None and after is not None:
        raise Invalid("Give before or after, not both.", fields={"before": ["Not with after."]})
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Invalid(f"limit must be 1 to {MAX_PAGE_SIZE}.", fields={"limit": ["Out of range."]})
    queryset = _messages(thread)
    if after is not None:
        rows = _page_rows(queryset.filter(seq__gt=after).order_by("seq"), limit + 1)
        has_newer = len(rows) > limit
        rows = _with_live_text(attach_file_ids(rows[:limit]))
        has_older = after > 0 and _any_seq(thread, seq__lte=after, order="-seq")
        return MessagePage(messages=rows, has_older=has_older, has_newer=has_newer)
    if before is not None:
        queryset = queryset.filter(seq__lt=before)
    rows = _page_rows(queryset.order_by("-seq"), limit + 1)
    has_older = len(rows) > limit
    rows = _with_live_text(attach_file_ids(rows[:limit]))
    rows.reverse()
    has_newer = before is not None and _any_seq(thread, seq__gte=before, order="seq")
    return MessagePage(messages=rows, has_older=has_older, has_newer=has_newer)


def thread_messages(*, thread: Thread) -> list[MessageRow]:
    """Every message of a thread, oldest first, read page by page along the (thread, seq)
    index."""
    rows: list[MessageRow] = []
    after = 0
    while True:
        page = message_page(thread=thread, after=after, limit=MAX_PAGE_SIZE)
        rows.extend(page.messages)
        if not page.has_newer or not page.messages:
            return rows
        after = page.messages[-1].seq


def messages_by_ids(*, user: User, ids: list[str]) -> list[MessageRow]:
    """The messages with these ids that the user may read (in threads they are in; an admin
    reads any), oldest first. Ids that are missing or not theirs are simply absent."""
    require_perm(user, Perm.MESSAGE_VIEW)
    wanted = [i for i in dict.fromkeys(ids) if is_valid_client_id(i)][:MAX_PAGE_SIZE]
    queryset = Message.objects.filter(pk__in=wanted)
    if not user.is_admin:
        queryset = queryset.filter(
            thread__in=ThreadMembership.objects.filter(user=user).values("thread_id")
        )
    rows = _page_rows(queryset.order_by("created_at", "thread_id", "seq"), MAX_PAGE_SIZE)
    return _with_live_text(attach_file_ids(rows))


def _any_seq(thread: Thread, *, order: str, **seq_filter: int) -> bool:
    # Ordered by seq so the planner walks the (thread, seq) index from the cursor; a bare
    # EXISTS lets PostgreSQL pick a sequential scan that reads half a deep thread first.
    # (.exists() would drop the ordering again.)
    return (
        Message.objects.filter(thread=thread, **seq_filter)
        .order_by(order)
        .values_list("seq", flat=True)
        .first()
    ) is not None


def access_message(*, user: User | AnonymousUser, message_id: str, perm: Perm) -> Message:
    """The message, if the user may `perm` it in its thread; one 404 for missing and not yours."""
    require_perm(user, perm)
    if not is_valid_client_id(message_id):
        raise NotFound(MESSAGE_NOT_FOUND)
    thread_id = Message.objects.filter(pk=message_id).values_list("thread_id", flat=True).first()
    if thread_id is None:
        raise NotFound(MESSAGE_NOT_FOUND)
    try:
        access_thread(user=user, thread_id=thread_id, perm=perm)
    except NotFound:
        raise NotFound(MESSAGE_NOT_FOUND) from None
    return _messages_by_id(message_id)


def _messages_by_id(message_id: str) -> Message:
    message = Message.objects.select_related("thread").get(pk=message_id)
    if message.status == Message.Status.STREAMING:
        message.text = live_texts([message.pk]).get(message.pk, message.text)
    return message


def _with_live_text(rows: list[MessageRow]) -> list[MessageRow]:
    """Replies being written show the text as of the last delta sent (see livetext)."""
    streaming = [row for row in rows if row.status == Message.Status.STREAMING]
    if streaming:
        texts = live_texts(row.id for row in streaming)
        for row in streaming:
            row.text = texts.get(row.id, row.text)
    return rows


def require_message_editor(*, user: User, message: Message) -> None:
    """Only the author edits a message."""
    if message.author_id is None or message.author_id != user.pk:
        raise Forbidden("Only the author can edit this message.")


def require_message_deleter(*, user: User, message: Message) -> None:
    """The author, the thread's owner or an admin may delete a message."""
    if user.is_admin or (message.author_id is not None and message.author_id == user.pk):
        return
    if not is_thread_owner(thread=message.thread, user=user):
        raise Forbidden("Only the author, the thread's owner or an admin can delete this message.")


def access_file(*, user: User | AnonymousUser, file_id: str) -> File:
    """A file its owner, a member of a thread it is attached to, or an admin may read."""
    if not user.is_authenticated or not is_valid_client_id(file_id):
        raise NotFound(FILE_NOT_FOUND)
    queryset = File.objects.filter(pk=file_id)
    if not (isinstance(user, User) and user.is_admin):
        access = Q(owner=user)
        # Reaching a file through a thread is reading that thread's messages.
        if has_perm(user, Perm.MESSAGE_VIEW):
            member_threads = ThreadMembership.objects.filter(user=user).values("thread_id")
            access |= Q(messages__thread_id__in=member_threads)
        queryset = queryset.filter(access).distinct()
    file = queryset.first()
    if file is None:
        raise NotFound(FILE_NOT_FOUND)
    return file


# --- search ----------------------------------------------------------------------------------

MAX_SEARCH_QUERY_CHARS = 200
DEFAULT_SEARCH_LIMIT = 20
MAX_SEARCH_LIMIT = 50
SNIPPET_CHARS = 160

# A search word is a run of letters and digits, which both engines' tokenizers (SQLite FTS5's
# unicode61, PostgreSQL's parser) also treat as word characters. Everything else only separates
# words, so no character the user types reaches FTS5 or tsquery syntax as an operator.
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class MessageHit:
    """A message that matched a search: where it is and a plain-text excerpt around the match."""

    id: str
    thread_id: str
    seq: int
    author_id: str | None
    snippet: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ThreadHit:
    id: str
    title: str
    last_activity_at: datetime


def search_terms(query: str) -> list[str]:
    """The words of a search query, lowercased, each once, in order.

    Raises Invalid for a query too long or without a single word (only punctuation, blank).
    """
    if len(query) > MAX_SEARCH_QUERY_CHARS:
        raise Invalid(
            f"The search query is longer than {MAX_SEARCH_QUERY_CHARS} characters.",
            fields={"q": [f"At most {MAX_SEARCH_QUERY_CHARS} characters."]},
        )
    terms = list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))
    if not terms:
        raise Invalid("Search for at least one word.", fields={"q": ["No words to search for."]})
    return terms


def _searchable_threads(*, user: User, perm: Perm, thread_id: str | None) -> QuerySet[Any]:
    """The ids of the threads a search may look in, as a subquery.

    One thread: exactly what access_thread allows, with its one 404 (an admin may search any
    thread they may open). Everywhere: the threads the user is a member of, as thread_list
    decides, admins included: an admin's search, like an admin's thread list, covers their own
    threads, not every thread on the server.
    """
    if thread_id is not None:
        thread = access_thread(user=user, thread_id=thread_id, perm=perm)
        return Thread.objects.filter(pk=thread.pk).values("pk")
    require_perm(user, perm)
    return ThreadMembership.objects.filter(user=user).values("thread_id")


def _clamp_limit(limit: int) -> int:
    return max(1, min(limit, MAX_SEARCH_LIMIT))


def message_search(
    *,
    user: User,
    query: str,
    thread_id: str | None = None,
    limit: int = DEFAULT_SEARCH_LIMIT,
    before: datetime | None = None,
) -> list[MessageHit]:
    """Messages matching every word of `query`, best match first, then newest.

    Looks only in threads where `user` holds chat-svc:message:view and is a member (see
    _searchable_threads); `thread_id` narrows the search to one thread, raising access_thread's
    Forbidden / NotFound. `before` keeps only messages created before that instant. `limit` is
    clamped to 1..MAX_SEARCH_LIMIT. Deleted messages are gone from the table, so never found.
    Raises Invalid for a query without words or over MAX_SEARCH_QUERY_CHARS.
    """
    threads = _searchable_threads(user=user, perm=Perm.MESSAGE_VIEW, thread_id=thread_id)
    terms = search_terms(query)
    if before is not None and timezone.is_naive(before):
        before = before.replace(tzinfo=UTC)  # stored times are UTC; so is a naive bound
    alias = Message.objects.db
    vendor = connections[alias].vendor
    limit = _clamp_limit(limit)
    if vendor in _FULL_TEXT:
        rows: Sequence[Message] = list(
            _FULL_TEXT[vendor](
                alias=alias, terms=terms, threads=threads, before=before, limit=limit
            )
        )
    else:
        rows = _like_search(terms=terms, threads=threads, before=before, limit=limit)
    return [
        MessageHit(
            id=row.id,
            thread_id=row.thread_id,
            seq=row.seq,
            author_id=row.author_id,
            snippet=search_snippet(row.text, terms),
            created_at=row.created_at,
        )
        for row in rows
    ]


# Both engines read the same columns; RawQuerySet turns them into (deferred) Message instances
# with Django's own conversions (times come back aware on SQLite too).
_HIT_COLUMNS = "m.id, m.thread_id, m.seq, m.author_id, m.text, m.created_at"


def _raw_filters(
    *, alias: str, threads: QuerySet[Any], before: datetime | None
) -> tuple[str, list[Any]]:
    """The visibility (and time) conditions on `m`, as SQL built by Django from the querysets."""
    thread_sql, thread_params = threads.query.get_compiler(using=alias).as_sql()
    sql = f" AND m.thread_id IN ({thread_sql})"
    params = list(thread_params)
    if before is not None:
        sql += " AND m.created_at < %s"
        params.append(connections[alias].ops.adapt_datetimefield_value(before))
    return sql, params


# A reply is found once it is written, not while its partial text is saved over and over:
# PostgreSQL's index leaves streaming rows out (migration 0004) and this is its condition,
# spelled as the index spells it so the planner can use it; SQLite filters the same way.
_SEARCHABLE = "m.status <> 'streaming'"


def _sqlite_search(
    *, alias: str, terms: list[str], threads: QuerySet[Any], before: datetime | None, limit: int
) -> RawQuerySet[Message]:
    # Each word becomes an FTS5 string: inside double quotes nothing is an operator (AND, OR,
    # NOT, NEAR, *, ^, column:), and strings side by side must all match.
    match = " ".join('"' + term.replace('"', '""') + '"' for term in terms)
    filters, params = _raw_filters(alias=alias, threads=threads, before=before)
    # Only Django-built SQL is interpolated; the user's words travel as parameters.
    sql = (
        f"SELECT {_HIT_COLUMNS} FROM messaging_message_fts "  # noqa: S608
        "JOIN messaging_message AS m ON m.rowid = messaging_message_fts.rowid "
        f"WHERE messaging_message_fts MATCH %s AND {_SEARCHABLE}{filters} "
        # bm25() is lower for better matches.
        "ORDER BY bm25(messaging_message_fts), m.created_at DESC, m.id DESC LIMIT %s"
    )
    return Message.objects.using(alias).raw(sql, [match, *params, limit])


# Exactly the indexed expression (migration 0003): any other spelling bypasses the GIN index.
_PG_VECTOR = "to_tsvector('simple'::regconfig, m.text)"
_PG_QUERY = "websearch_to_tsquery('simple'::regconfig, %s)"


def _postgresql_search(
    *, alias: str, terms: list[str], threads: QuerySet[Any], before: datetime | None, limit: int
) -> RawQuerySet[Message]:
    # websearch_to_tsquery never raises on odd input; quoting each word also keeps `or` and a
    # leading `-` literal words, so a query means the same (all words) as on SQLite.
    words = " ".join(f'"{term}"' for term in terms)
    filters, params = _raw_filters(alias=alias, threads=threads, before=before)
    sql = (
        f"SELECT {_HIT_COLUMNS} FROM messaging_message AS m "  # noqa: S608
        f"WHERE {_PG_VECTOR} @@ {_PG_QUERY} AND {_SEARCHABLE}{filters} "
        f"ORDER BY ts_rank({_PG_VECTOR}, {_PG_QUERY}) DESC, m.created_at DESC, m.id DESC "
        "LIMIT %s"
    )
    return Message.objects.using(alias).raw(sql, [words, *params, words, limit])


_FULL_TEXT = {"sqlite": _sqlite_search, "postgresql": _postgresql_search}


def _like_search(
    *, terms: list[str], threads: QuerySet[Any], before: datetime | None, limit: int
) -> list[Message]:
    """Databases without a full-text index (migration 0003 does nothing there): a slow scan,
    substring matches, newest first."""
    queryset = Message.objects.filter(thread_id__in=threads).exclude(
        status=Message.Status.STREAMING
    )
    if before is not None:
        queryset = queryset.filter(created_at__lt=before)
    for term in terms:
        queryset = queryset.filter(text__icontains=term)
    return list(
        queryset.only("id", "thread_id", "seq", "author_id", "text", "created_at").order_by(
            "-created_at", "-id"
        )[:limit]
    )


def search_snippet(text: str, terms: Sequence[str]) -> str:
    """About SNIPPET_CHARS of `text` around the first matching word, on one line, cut at spaces,
    with "…" where it was cut. Plain text, no markup: clients escape it as they escape any
    message text."""
    flat = " ".join(text.split())
    if len(flat) <= SNIPPET_CHARS:
        return flat
    pattern = re.compile(
        r"(?<![^\W_])(?:" + "|".join(re.escape(term) for term in terms) + r")(?![^\W_])",
        re.IGNORECASE,
    )
    found = pattern.search(flat)
    at, after = (found.start(), found.end()) if found else (0, 0)
    # The match a third of the way in: some words before it, more after.
    start = max(0, at - SNIPPET_CHARS // 3)
    end = min(len(flat), start + SNIPPET_CHARS)
    start = max(0, end - SNIPPET_CHARS)
    # Cut between words, never through the match.
    if start > 0 and flat[start - 1] != " ":
        space = flat.find(" ", start, at)
        start = space + 1 if space != -1 else start
    if end < len(flat) and flat[end] != " ":
        space = flat.rfind(" ", after, end)
        end = space if space != -1 else end
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")


def thread_search(
    *,
    user: User,
    query: str,
    thread_id: str | None = None,
    limit: int = DEFAULT_SEARCH_LIMIT,
) -> list[ThreadHit]:
    """The user's threads (as thread_list shows them, chat-svc:thread:view) whose title contains
    every word of `query`, newest activity first. `thread_id` narrows to that one thread, with
    access_thread's errors; `limit` is clamped to 1..MAX_SEARCH_LIMIT."""
    threads = _searchable_threads(user=user, perm=Perm.THREAD_VIEW, thread_id=thread_id)
    terms = search_terms(query)
    queryset = Thread.objects.filter(pk__in=threads)
    for term in terms:
        # Titles are short and few per user: a substring scan needs no index.
        queryset = queryset.filter(title__icontains=term)
    rows = queryset.order_by("-last_activity_at", "-id").values_list(
        "id", "title", "last_activity_at"
    )
    return [ThreadHit(*row) for row in rows[: _clamp_limit(limit)]]
