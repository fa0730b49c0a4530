"""Payment collection behind a small interface; no provider is wired in yet.

A booking records its price (rate x length) when it is made. A real provider would implement
`PaymentGateway` (authorise when a request is accepted, capture after the session, refund on a
cancellation that is not charged) and be chosen from the settings.
"""

from __future__ import annotations

from typing import Protocol

from panda.store.models import Booking


class PaymentGateway(Protocol):
    """What the booking flow calls; each method returns the booking's new payment state."""

    name: str

    async def on_requested(self, booking: Booking) -> str:
        """A request with a price was made."""
        ...

    async def on_cancelled(self, booking: Booking, *, charge: bool) -> str:
        """The booking ended before it took place; `charge` when the student still pays."""
        ...


class NoPayments:
    """The default: prices are recorded, nothing is collected."""

    name = "none"

    async def on_requested(self, booking: Booking) -> str:
        """Nothing to authorise."""
        return "not_collected"

    async def on_cancelled(self, booking: Booking, *, charge: bool) -> str:
        """Nothing to refund."""
        return "not_collected"


def price_cents(hourly_rate_cents: int, minutes: int) -> int:
    """The price of a session of `minutes` at an hourly rate, rounded to the cent."""
    return (hourly_rate_cents * minutes + 30) // 60
