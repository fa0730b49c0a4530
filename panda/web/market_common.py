"""Small helpers shared by the marketplace's handlers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from panda import keys
from panda.errors import NotFound, ValidationError
from panda.market.availability import parse_instant, zone_of
from panda.market.booking import BookingRules
from panda.store.models import User


def rules(request: web.Request) -> BookingRules:
    """The booking policy for this app."""
    return BookingRules.from_settings(request.app[keys.settings])


def int_param(value: str, what: str = "item") -> int:
    """A positive integer path parameter; 404 otherwise (nothing exists at that address)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"We could not find that {what}.") from None
    if number <= 0 or number > 2**31:
        raise NotFound(f"We could not find that {what}.")
    return number


def instant(value: Any, field: str = "start") -> datetime:
    """An ISO 8601 instant with offset, or a 422 naming the field."""
    parsed = parse_instant(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValidationError(
            f"Give {field} as an ISO 8601 time with a zone, e.g. 2026-12-01T17:00:00Z.",
            fields={field: "Use ISO 8601 with Z or an offset."},
        )
    return parsed


def day_groups(
    slots: list[tuple[datetime, datetime]], user: User | None, tz_name: str | None = None
) -> list[tuple[str, list[tuple[datetime, datetime]]]]:
    """Slots grouped by local date label for the viewer."""
    zone = zone_of(tz_name or (user.timezone if user else "UTC"))
    groups: dict[str, list[tuple[datetime, datetime]]] = {}
    for start, end in slots:
        label = start.astimezone(zone).strftime("%A %d %B")
        groups.setdefault(label, []).append((start, end))
    return list(groups.items())


def money(cents: int, currency: str) -> str:
    """A price for display."""
    symbol = {"EUR": "€", "USD": "$", "GBP": "£"}.get(currency, currency + " ")
    return f"{symbol}{cents / 100:,.2f}".replace(".00", "")


def week_range(now: datetime, days: int = 7) -> tuple[datetime, datetime]:
    """[now, now + days)."""
    return now, now + timedelta(days=days)
