from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from threads import services
from threads.models import User


class Command(BaseCommand):
    help = "Print a new API token for USERNAME (use it as 'Authorization: Bearer <token>')."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="Create the user if missing.")
        parser.add_argument("--name", default="", help="A label for the token.")

    def handle(self, *args: Any, username: str, create: bool, name: str, **options: Any) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"No user {username!r}; pass --create to create one.")
            user = services.user_create(username=username)
        _, raw = services.token_issue(user=user, name=name or "issue_token")
        self.stdout.write(raw)
