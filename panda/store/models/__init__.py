"""All models; importing this module registers every table on `Base.metadata`."""

from panda.store.models.accounts import (
    ROLES,
    TOKEN_PURPOSES,
    TUTOR_STATUSES,
    AuditEntry,
    OneTimeToken,
    RateCounter,
    User,
    UserSession,
)
from panda.store.models.base import Base
from panda.store.models.bookings import ACTIVE_STATUSES, BOOKING_STATUSES, Booking
from panda.store.models.calls import PARTICIPANT_ROLES, ROOM_STATUSES, CallParticipant, CallRoom

__all__ = [
    "ACTIVE_STATUSES",
    "BOOKING_STATUSES",
    "PARTICIPANT_ROLES",
    "ROLES",
    "ROOM_STATUSES",
    "TOKEN_PURPOSES",
    "TUTOR_STATUSES",
    "AuditEntry",
    "Base",
    "Booking",
    "CallParticipant",
    "CallRoom",
    "OneTimeToken",
    "RateCounter",
    "User",
    "UserSession",
]
