from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents import services
from agents.selectors import balance_of
from threads.models import User


class Command(BaseCommand):
    help = "Add AMOUNT (may be negative) to USERNAME's balance, as a ledger credit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("amount")
        parser.add_argument("--note", default="manage.py credit")

    def handle(self, *args: Any, username: str, amount: str, note: str, **options: Any) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        try:
            value = Decimal(amount)
        except InvalidOperation as exc:
            raise CommandError(f"{amount!r} is not an amount.") from exc
        services.credit_add(user=user, amount=value, note=note)
        self.stdout.write(str(balance_of(user=user)))
