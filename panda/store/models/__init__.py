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
from panda.store.models.recordings import (
    COMBINED_STATUSES,
    RECORDING_STATUSES,
    Recording,
    RecordingFile,
    RecordingSettings,
)

__all__ = [
    "ACTIVE_STATUSES",
    "BOOKING_STATUSES",
    "COMBINED_STATUSES",
    "RECORDING_STATUSES",
    "ROLES",
    "TOKEN_PURPOSES",
    "TUTOR_STATUSES",
    "AuditEntry",
    "Base",
    "Booking",
    "OneTimeToken",
    "RateCounter",
    "Recording",
    "RecordingFile",
    "RecordingSettings",
    "User",
    "UserSession",
]
