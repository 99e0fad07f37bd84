from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest

from threads import rates, services
from threads.models import ApiToken, GroupLimits, Thread, ThreadMembership, Topic, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "id", "email", "is_active", "is_superuser", "last_login")
    search_fields = ("username", "email", "id")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            # Users made here get the default chat permissions like every other new user; the
            # operator can then take any of them away on this page.
            services.user_grant_defaults(user=obj)


class MembershipInline(admin.TabularInline):
    model = ThreadMembership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    list_display = ("title", "id", "creator", "last_activity_at", "last_message_seq")
    list_filter = ("topics", "created_at")
    search_fields = ("title", "id", "creator__username", "memberships__user__username")
    readonly_fields = ("id", "last_message_seq", "created_at", "updated_at")
    filter_horizontal = ("topics",)
    inlines = (MembershipInline,)
    date_hierarchy = "last_activity_at"
    show_full_result_count = False


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "id", "created_at")
    search_fields = ("name", "slug", "id")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("id", "prefix", "created_at", "last_used_at")
    fields = ("id", "user", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    autocomplete_fields = ("user",)
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A token's secret is shown once, at creation; use `manage.py issue_token`.
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for token in queryset:
            services.token_revoke(token=token)


@admin.register(GroupLimits)
class GroupLimitsAdmin(admin.ModelAdmin):
    """A group's rate limits where they differ from the RATE_LIMIT_* defaults."""

    list_display = ("group", "posts", "replies", "uploads", "ws_connects", "ws_subscribes")
    search_fields = ("group__name",)
    autocomplete_fields = ("group",)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # The members' cached rates would otherwise hold the old ones for a while longer.
        rates.user_rates_forget(user_ids=list(obj.group.user_set.values_list("pk", flat=True)))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        members = list(obj.group.user_set.values_list("pk", flat=True))
        super().delete_model(request, obj)
        rates.user_rates_forget(user_ids=members)
