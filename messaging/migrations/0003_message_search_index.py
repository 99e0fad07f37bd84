"""Full-text search over Message.text (messaging.selectors.message_search).

Each database does this its own way, and neither way is a Django `Index` SQLite can build, so
the SQL is written here by hand and `makemigrations` never sees a model change:

- PostgreSQL: a GIN index on `to_tsvector('simple', text)`. The search query repeats exactly
  this expression, or the planner cannot use the index. 'simple' lowercases and does not stem
  or drop stop words: messages mix languages, code and names, and English stemming would
  surprise as often as it helps. Built CONCURRENTLY so a large messages table keeps taking
  posts while it builds (hence `atomic = False`).
- SQLite: an FTS5 external-content table (the words are indexed, the text stays in
  messaging_message, joined on rowid) kept in sync by triggers. Diacritics are kept so a word
  matches the same way on both databases.
- Any other database: nothing; the selector falls back to a slow LIKE search.

Caution for later migrations on SQLite: altering messaging_message makes Django rebuild the
table (copy, drop, rename), which drops these triggers and renumbers rowids. Such a migration
must re-create the triggers and rebuild the index; tests/messaging/test_search.py checks that
the triggers exist and the index is consistent after all migrations.
"""

from django.db import migrations, transaction

PG_INDEX = "message_text_search_idx"

PG_FORWARD = (
    # A failed concurrent build leaves an invalid index behind; drop it so a re-run rebuilds.
    f"DROP INDEX CONCURRENTLY IF EXISTS {PG_INDEX}",
    f"CREATE INDEX CONCURRENTLY {PG_INDEX} ON messaging_message "
    "USING gin (to_tsvector('simple'::regconfig, text))",
)
PG_BACKWARD = (f"DROP INDEX CONCURRENTLY IF EXISTS {PG_INDEX}",)

# Spelled out rather than formatted: this is the SQL that runs, to be read as it is.
SQLITE_FORWARD = (
    """CREATE VIRTUAL TABLE messaging_message_fts USING fts5(
        text,
        content='messaging_message',
        content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 0'
    )""",
    """CREATE TRIGGER messaging_message_fts_insert AFTER INSERT ON messaging_message BEGIN
        INSERT INTO messaging_message_fts(rowid, text) VALUES (new.rowid, new.text);
    END""",
    # An external-content index forgets a row by being told the exact text it indexed.
    """CREATE TRIGGER messaging_message_fts_delete AFTER DELETE ON messaging_message BEGIN
        INSERT INTO messaging_message_fts(messaging_message_fts, rowid, text)
            VALUES ('delete', old.rowid, old.text);
    END""",
    # Only text changes touch the index: status and timestamp saves (many per streamed AI
    # reply) cost nothing extra.
    """CREATE TRIGGER messaging_message_fts_update AFTER UPDATE OF text ON messaging_message
    BEGIN
        INSERT INTO messaging_message_fts(messaging_message_fts, rowid, text)
            VALUES ('delete', old.rowid, old.text);
        INSERT INTO messaging_message_fts(rowid, text) VALUES (new.rowid, new.text);
    END""",
    # Index the messages that exist already.
    "INSERT INTO messaging_message_fts(messaging_message_fts) VALUES ('rebuild')",
)
SQLITE_BACKWARD = (
    "DROP TRIGGER IF EXISTS messaging_message_fts_update",
    "DROP TRIGGER IF EXISTS messaging_message_fts_delete",
    "DROP TRIGGER IF EXISTS messaging_message_fts_insert",
    "DROP TABLE IF EXISTS messaging_message_fts",
)


def _run(schema_editor, *, postgresql, sqlite):
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        # Outside any transaction: CREATE INDEX CONCURRENTLY refuses to run inside one.
        for sql in postgresql:
            schema_editor.execute(sql)
    elif connection.vendor == "sqlite":
        # The migration is not atomic (for PostgreSQL's sake); on SQLite the table, the
        # triggers and the rebuild land together or not at all.
        with transaction.atomic(using=connection.alias):
            for sql in sqlite:
                schema_editor.execute(sql)


def forwards(apps, schema_editor):
    _run(schema_editor, postgresql=PG_FORWARD, sqlite=SQLITE_FORWARD)


def backwards(apps, schema_editor):
    _run(schema_editor, postgresql=PG_BACKWARD, sqlite=SQLITE_BACKWARD)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messaging", "0002_threadevent"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
