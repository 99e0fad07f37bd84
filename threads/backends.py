"""Django's ModelBackend, loading a user's permissions in one query instead of two."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models import CharField, OuterRef, Q, Value
from django.db.models.expressions import BaseExpression
from django.db.models.functions import Concat


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


def permission_codes_of(user_id: OuterRef) -> BaseExpression | None:
    """The user's and their groups' permission codes ("app_label.codename") as one array
    column, for a query that reads the user anyway (token authentication) to carry: one round
    trip fewer on every API call. PostgreSQL only (an array subquery); elsewhere None, and
    the backend reads them on first use as before. Not for superusers: they hold every
    permission, which the backend lists itself."""
    if connection.vendor != "postgresql":
        return None
    from django.contrib.postgres.expressions import ArraySubquery

    codes = (
        Permission.objects.filter(Q(user=user_id) | Q(group__user=user_id))
        .order_by()
        .values_list(
            Concat("content_type__app_label", Value("."), "codename", output_field=CharField())
        )
    )
    return ArraySubquery(codes)


def permissions_preload(user: Any, codes: list[str] | None) -> None:
    """Cache codes read by `permission_codes_of` on the user, as get_all_permissions would."""
    if codes is not None and user.is_active and not user.is_superuser:
        user._perm_cache = set(codes)
