"""Django's ModelBackend, loading a user's permissions in one query instead of two."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection


class OneQueryModelBackend(ModelBackend):
    """Every API call checks a permission, so the user's and their groups' permissions are read
    with one UNION query (and cached on the user object for the rest of the request, as
    ModelBackend does) rather than ModelBackend's two."""

    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                rows = Permission.objects.values_list("content_type__app_label", "codename")
            else:
                # Permission's default ordering must go: SQL forbids ORDER BY inside a UNION.
                direct = Permission.objects.filter(user=user_obj).order_by()
                via_groups = Permission.objects.filter(group__user=user_obj).order_by()
                rows = direct.values_list("content_type__app_label", "codename").union(
                    via_groups.values_list("content_type__app_label", "codename")
                )
            user_obj._perm_cache = {f"{app_label}.{codename}" for app_label, codename in rows}
        return set(user_obj._perm_cache)


def permission_codes_sql(user_id: str) -> str | None:
    """SQL for the user's and their groups' permission codes ("app_label.codename") as one
    array column, for a query that reads the user anyway (token authentication) to carry: one
    round trip fewer on every API call. `user_id` is the SQL of the user's id in that query.
    PostgreSQL only (an array subquery); elsewhere None, and the backend reads them on first
    use as before. Not for superusers: they hold every permission, which the backend lists."""
    if connection.vendor != "postgresql":
        return None
    q = connection.ops.quote_name
    user_model = get_user_model()
    direct = user_model._meta.get_field("user_permissions")
    groups = user_model._meta.get_field("groups")
    group_permissions = Group._meta.get_field("permissions")
    permission, content_type = Permission._meta, ContentType._meta
    return (
        f"ARRAY(SELECT ct.{q('app_label')} || '.' || p.{q('codename')}"  # noqa: S608
        f" FROM {q(permission.db_table)} p"
        f" INNER JOIN {q(content_type.db_table)} ct"
        f" ON ct.{q(content_type.pk.column)} = p.{q(permission.get_field('content_type').column)}"
        f" WHERE p.{q(permission.pk.column)} IN ("
        f"SELECT d.{q(direct.m2m_reverse_name())} FROM {q(direct.m2m_db_table())} d"
        f" WHERE d.{q(direct.m2m_column_name())} = {user_id}"
        f" UNION ALL SELECT gp.{q(group_permissions.m2m_reverse_name())}"
        f" FROM {q(group_permissions.m2m_db_table())} gp"
        f" INNER JOIN {q(groups.m2m_db_table())} ug"
        f" ON ug.{q(groups.m2m_reverse_name())} = gp.{q(group_permissions.m2m_column_name())}"
        f" WHERE ug.{q(groups.m2m_column_name())} = {user_id}))"
    )


def permissions_preload(user: Any, codes: list[str] | None) -> None:
    """Cache codes read by `permission_codes_sql` on the user, as get_all_permissions would."""
    if codes is not None and user.is_active and not user.is_superuser:
        user._perm_cache = set(codes)
