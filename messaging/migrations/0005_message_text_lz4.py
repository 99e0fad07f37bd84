"""PostgreSQL: message text compressed with lz4 instead of pglz.

A streaming reply's partial text is saved every STREAM_SAVE_MS, and each save compresses the
whole text so far again. pglz took 0.9 ms of database CPU per save at 50 KB (measured here:
1.3 ms per save against 0.45 ms with lz4), which landed on the cores streaming the reply; lz4
still compresses (50 KB of tokens to 20 KB). Only values written from now on change; old rows
keep pglz until rewritten, and both read the same. A server built without lz4 keeps pglz.
"""

from django.db import DatabaseError, migrations, transaction

FORWARD = "ALTER TABLE messaging_message ALTER COLUMN text SET COMPRESSION lz4"
BACKWARD = "ALTER TABLE messaging_message ALTER COLUMN text SET COMPRESSION pglz"


def _alter(schema_editor, sql):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=connection.alias):
            schema_editor.execute(sql)
    except DatabaseError:
        # PostgreSQL before 14, or built without lz4: the default compression stays.
        pass


def forwards(apps, schema_editor):
    _alter(schema_editor, FORWARD)


def backwards(apps, schema_editor):
    _alter(schema_editor, BACKWARD)


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0004_search_index_skips_streaming"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
