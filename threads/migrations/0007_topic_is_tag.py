from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("threads", "0006_membership_last_read_seq"),
    ]

    operations = [
        migrations.AddField(
            model_name="topic",
            name="is_tag",
            field=models.BooleanField(default=False),
        ),
    ]
