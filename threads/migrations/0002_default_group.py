"""The default group that gives every regular user the ten chat permissions."""

from django.db import migrations

CHAT_PERMISSION_CODENAMES = [
    "chat-svc:thread:create",
    "chat-svc:thread:view",
    "chat-svc:thread:edit",
    "chat-svc:thread:delete",
    "chat-svc:thread:stream",
    "chat-svc:message:create",
    "chat-svc:message:view",
    "chat-svc:message:edit",
    "chat-svc:message:delete",
    "chat-svc:message:stream",
]


def create_default_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are normally created after all migrations (post_migrate); create this app's
    # now so the group can hold them.
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("threads")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="Chat users")
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="threads", codename__in=CHAT_PERMISSION_CODENAMES
        )
    )


def remove_default_group(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("auth", "Group").objects.filter(name="Chat users").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("threads", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_default_group, remove_default_group)]
