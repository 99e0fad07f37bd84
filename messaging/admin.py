from __future__ import annotations

from django.contrib import admin

from messaging.models import File, Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "thread", "seq", "author", "status", "edited", "created_at")
    list_filter = ("status", "edited")
    search_fields = ("id", "thread__id", "thread__title", "author__username")
    readonly_fields = ("id", "thread", "seq", "created_at", "updated_at")
    raw_id_fields = ("author", "files")
    list_select_related = ("thread", "author")
    show_full_result_count = False


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ("name", "id", "owner", "content_type", "size", "created_at")
    list_filter = ("content_type",)
    search_fields = ("name", "id", "owner__username", "sha256")
    readonly_fields = ("id", "sha256", "size", "content_type", "created_at")
    list_select_related = ("owner",)
