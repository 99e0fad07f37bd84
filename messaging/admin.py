from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from messaging import services
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

    # Deleting a file here must remove its stored object too (after commit), not only the row.
    def delete_model(self, request: HttpRequest, obj: File) -> None:
        services.file_delete(files=[obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[File]) -> None:
        services.file_delete(files=list(queryset))
