"""Pure time arithmetic: weekly hours in the tutor's zone -> concrete UTC windows -> slots.

Everything here is deterministic and free of I/O so daylight-saving changes can be tested
directly. Local wall-clock times are converted with zoneinfo; a wall time that does not exist
(the hour skipped in spring) resolves like zoneinfo's fold=0, i.e. to the instant one hour later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from panda.store.models.bookings import CLAIM_UNIT_MINUTES

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class WeeklyRule:
    """Recurring hours: weekday 0 = Monday; minutes from local midnight (end may be 1440)."""

    weekday: int
    start_minute: int
    end_minute: int


@dataclass(frozen=True)
class DateException:
    """A dated change: kind "off" (whole day when minutes are None) or "extra" hours."""

    day: date
    kind: str
    start_minute: int | None = None
    end_minute: int | None = None


Interval = tuple[datetime, datetime]


def zone_of(name: str | None) -> ZoneInfo:
    """The ZoneInfo for an IANA name, UTC when unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def is_valid_zone(name: str) -> bool:
    """True for a known IANA time zone name."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def local_to_utc(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `minute` (0..1440) on `day` in `zone`."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    # Aware + timedelta is wall-clock arithmetic: the offset is resolved for the new wall time.
    wall = midnight + timedelta(minutes=minute)
    return wall.astimezone(UTC)


def epoch_minutes(value: datetime) -> int:
    """Whole minutes since the Unix epoch."""
    return int((value - EPOCH).total_seconds() // 60)


def from_epoch_minutes(value: int) -> datetime:
    """The UTC instant `value` minutes after the epoch."""
    return EPOCH + timedelta(minutes=value)


def claim_units(start: datetime, end: datetime) -> list[int]:
    """The claim units (15-minute steps since the epoch) that [start, end) touches."""
    first = epoch_minutes(start) // CLAIM_UNIT_MINUTES
    last = -(-int((end - EPOCH).total_seconds()) // (CLAIM_UNIT_MINUTES * 60))
    return list(range(first, last))


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _subtract(intervals: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in intervals:
        if cut[1] <= start or cut[0] >= end:
            out.append((start, end))
            continue
        if start < cut[0]:
            out.append((start, cut[0]))
        if cut[1] < end:
            out.append((cut[1], end))
    return out


def day_minutes(
    day: date, rules: Sequence[WeeklyRule], exceptions: Sequence[DateException]
) -> list[tuple[int, int]]:
    """Open (start_minute, end_minute) ranges on one local date after exceptions."""
    ranges = [(r.start_minute, r.end_minute) for r in rules if r.weekday == day.weekday()]
    todays = [e for e in exceptions if e.day == day]
    for exc in todays:
        if exc.kind == "off":
            if exc.start_minute is None or exc.end_minute is None:
                ranges = []
            else:
                ranges = _subtract(ranges, (exc.start_minute, exc.end_minute))
    for exc in todays:
        if exc.kind == "extra" and exc.start_minute is not None and exc.end_minute is not None:
            ranges.append((exc.start_minute, exc.end_minute))
    return _merge(ranges)


def open_windows(
    rules: Sequence[WeeklyRule],
    exceptions: Sequence[DateException],
    zone: ZoneInfo,
    start: datetime,
    end: datetime,
) -> list[Interval]:
    """Concrete UTC windows of open hours overlapping [start, end), in order."""
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    out: list[Interval] = []
    day = first
    while day <= last:
        for s_min, e_min in day_minutes(day, rules, exceptions):
            ws, we = local_to_utc(day, s_min, zone), local_to_utc(day, e_min, zone)
            if we > start and ws < end and we > ws:
                out.append((ws, we))
        day += timedelta(days=1)
    return out


def generate_slots(
    windows: Sequence[Interval],
    *,
    length: timedelta,
    buffer: timedelta = timedelta(0),
    not_before: datetime,
    range_start: datetime,
    range_end: datetime,
    busy: Sequence[Interval] = (),
) -> list[Interval]:
    """Bookable [start, end) slots: stepped by length + buffer from each window's start,
    inside the window, starting in [range_start, range_end) and not before `not_before`,
    keeping `buffer` clear of every busy interval."""
    out: list[Interval] = []
    step = length + buffer
    for ws, we in windows:
        slot = ws
        while slot + length <= we:
            slot_end = slot + length
            if (
                slot >= not_before
                and range_start <= slot < range_end
                and not any(
                    b_start < slot_end + buffer and b_end + buffer > slot for b_start, b_end in busy
                )
            ):
                out.append((slot, slot_end))
            slot += step
    return out


def parse_hhmm(value: str) -> int | None:
    """Minutes from midnight for "HH:MM" ("24:00" allowed); None when malformed."""
    try:
        hours_s, minutes_s = value.strip().split(":")
        hours, minutes = int(hours_s), int(minutes_s)
    except ValueError:
        return None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes


def format_hhmm(minute: int) -> str:
    """ "HH:MM" for minutes from midnight."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def month_key(value: datetime, zone: ZoneInfo) -> str:
    """YYYY-MM of `value` in `zone` (the quota month)."""
    return value.astimezone(zone).strftime("%Y-%m")


def parse_instant(value: str) -> datetime | None:
    """An ISO 8601 instant with an offset (or Z), as aware UTC; None when malformed or naive."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if parsed.tzinfo is None:
        return None
    # Far-off years are never bookable and would overflow date arithmetic further on.
    if not 1971 <= parsed.year <= 2200:
        return None
    return parsed.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
