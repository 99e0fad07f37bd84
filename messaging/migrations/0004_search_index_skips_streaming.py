"""PostgreSQL: the full-text index leaves out replies still being written.

While a reply streams, its partial text is saved every STREAM_SAVE_MS; with every row in the
GIN index, each save recomputed `to_tsvector` over the whole text so far (3.8 ms of database
CPU per save at 50 KB, measured here, against 1.3 ms without), so the cost grew with the reply
and landed on the cores streaming it. A partial index skips rows in status `streaming`; the
reply is indexed once, when it finishes. The search query (messaging.selectors) carries the
same condition so the planner can use the index. SQLite's FTS5 triggers are unchanged: an
external-content index must be told the exact text it indexed to forget it, which a trigger
that skips some updates cannot know.
"""

from django.db import migrations

PG_INDEX = "message_text_search_idx"
_FULL = (
    f"CREATE INDEX CONCURRENTLY {PG_INDEX} ON messaging_message "
    "USING gin (to_tsvector('simple'::regconfig, text))"
)

PG_FORWARD = (
    f"DROP INDEX CONCURRENTLY IF EXISTS {PG_INDEX}",
    # Spelled as messaging.selectors._SEARCHABLE spells it.
    f"{_FULL} WHERE status <> 'streaming'",
)
PG_BACKWARD = (f"DROP INDEX CONCURRENTLY IF EXISTS {PG_INDEX}", _FULL)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # Outside any transaction: CREATE INDEX CONCURRENTLY refuses to run inside one.
        for sql in PG_FORWARD:
            schema_editor.execute(sql)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in PG_BACKWARD:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messaging", "0003_message_search_index"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
