from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from threads import services
from threads.models import User


class Command(BaseCommand):
    help = "Create the demo user (once) and print how to log in and a fresh API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, username: str, url: str, **options: Any) -> None:
        # The password is kept under var/ (mode 0600) so every `make run` can print it again.
        password_file = Path(settings.VAR_DIR) / f"{username}_password"
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(9)
            # The demo user is an admin too, so the same login opens /admin/.
            user = services.user_create(username=username, password=password, is_superuser=True)
            password_file.write_text(password)
            password_file.chmod(0o600)
        shown_password = password_file.read_text().strip() if password_file.exists() else None
        _, token = services.token_issue(user=user, name="make run")
        lines = [
            "",
            f"Threadline is starting on {url}",
            f"  log in:   {url}/  as {username!r}"
            + (f" with password {shown_password!r}" if shown_password else " (your own password)"),
            f"  API docs: {url}/api/v1/docs/",
            f"  token:    {token}",
            f"  try:      curl -H 'Authorization: Bearer {token}' {url}/api/v1/me/",
            "",
        ]
        self.stdout.write("\n".join(lines))
