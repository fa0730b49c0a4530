"""Tutor search: filters, sorting and pagination in one indexed query (plus a count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.market.availability import epoch_minutes, parse_instant
from panda.market.tutors import MAX_WINDOW_MINUTES, WINDOW_HORIZON, TutorCard, cards
from panda.store.models import (
    ACTIVE_STATUSES,
    AvailabilityWindow,
    Booking,
    Subject,
    TutorLanguage,
    TutorProfile,
    TutorSubject,
    User,
)
from panda.store.types import utcnow

SORTS = ("rating", "price", "price_desc", "newest")
PAGE_SIZE = 12
MAX_PAGE_SIZE = 50


@dataclass
class SearchQuery:
    """Validated search parameters."""

    subject: str = ""
    min_price: int | None = None  # cents
    max_price: int | None = None
    language: str = ""
    location: str = ""
    online: bool = False
    min_rating: float | None = None
    free_from: datetime | None = None
    free_to: datetime | None = None
    sort: str = "rating"
    page: int = 1
    per_page: int = PAGE_SIZE
    errors: dict[str, str] = field(default_factory=dict)


def _money(raw: str, name: str, errors: dict[str, str]) -> int | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        errors[name] = "Enter an amount like 25 or 25.50."
        return None
    if not 0 <= value <= 100_000:  # also refuses nan
        errors[name] = "Enter an amount between 0 and 100000."
        return None
    return round(value * 100)


def _local_window(params: Any, tz: str, errors: dict[str, str]) -> tuple[str, str]:
    """ISO instants from the page's local fields (free_day, free_start, free_end in `tz`)."""
    from datetime import date as date_cls

    from panda.market.availability import local_to_utc, parse_hhmm, zone_of

    day_raw = str(params.get("free_day", "")).strip()
    if not day_raw:
        return "", ""
    try:
        day = date_cls.fromisoformat(day_raw)
    except ValueError:
        errors["free_day"] = "Pick a date."
        return "", ""
    start = parse_hhmm(str(params.get("free_start", "")) or "00:00")
    end = parse_hhmm(str(params.get("free_end", "")) or "24:00")
    if start is None or end is None or start >= end:
        errors["free_start"] = "Give a start time before the end time."
        return "", ""
    if not 1971 <= day.year <= 2200:
        errors["free_day"] = "Pick a date in the next weeks."
        return "", ""
    zone = zone_of(tz)
    return (
        local_to_utc(day, start, zone).isoformat(),
        local_to_utc(day, end, zone).isoformat(),
    )


def parse_query(params: Any, *, now: datetime | None = None, tz: str = "UTC") -> SearchQuery:
    """A SearchQuery from query-string parameters; field errors collected in `errors`."""
    q = SearchQuery()
    errors = q.errors
    q.subject = str(params.get("subject", "")).strip()[:80]
    q.min_price = _money(str(params.get("min_price", "")), "min_price", errors)
    q.max_price = _money(str(params.get("max_price", "")), "max_price", errors)
    if q.min_price is not None and q.max_price is not None and q.min_price > q.max_price:
        errors["max_price"] = "The maximum must not be below the minimum."
    q.language = str(params.get("language", "")).strip().lower()[:40]
    q.location = str(params.get("location", "")).strip()[:80]
    q.online = str(params.get("online", "")).lower() in {"1", "true", "on", "yes"}
    raw_rating = str(params.get("min_rating", "")).strip()
    if raw_rating:
        try:
            q.min_rating = float(raw_rating)
            if not 0 <= q.min_rating <= 5:
                raise ValueError
        except ValueError:
            errors["min_rating"] = "Enter a rating between 0 and 5."
            q.min_rating = None
    raw_from = str(params.get("free_from", "")).strip()
    raw_to = str(params.get("free_to", "")).strip()
    if not raw_from and not raw_to:
        raw_from, raw_to = _local_window(params, tz, errors)
    if raw_from or raw_to:
        q.free_from = parse_instant(raw_from) if raw_from else None
        q.free_to = parse_instant(raw_to) if raw_to else None
        if q.free_from is None:
            errors["free_from"] = "Give a start like 2026-12-01T17:00:00Z."
        if q.free_to is None:
            errors["free_to"] = "Give an end like 2026-12-01T20:00:00Z."
        if q.free_from and q.free_to:
            now = now or utcnow()
            if q.free_to <= q.free_from:
                errors["free_to"] = "The end must be after the start."
            elif q.free_to - q.free_from > timedelta(days=7):
                errors["free_to"] = "Search a window of at most 7 days."
            elif q.free_to > now + WINDOW_HORIZON:
                errors["free_to"] = "Search within the next 8 weeks."
    q.sort = str(params.get("sort", "rating")).strip() or "rating"
    if q.sort not in SORTS:
        errors["sort"] = f"Sort by one of: {', '.join(SORTS)}."
        q.sort = "rating"
    for name, default, hi in (("page", 1, 10_000), ("per_page", PAGE_SIZE, MAX_PAGE_SIZE)):
        raw = str(params.get(name, "")).strip()
        if not raw:
            setattr(q, name, default)
            continue
        try:
            value = int(raw)
            if not 1 <= value <= hi:
                raise ValueError
        except ValueError:
            errors[name] = f"Enter a whole number from 1 to {hi}."
            value = default
        setattr(q, name, value)
    return q


def _conditions(q: SearchQuery) -> list[Any]:
    """WHERE clauses over tutor_profiles only (approval is mirrored there by triggers)."""
    conds: list[Any] = [TutorProfile.approved.is_(True), TutorProfile.listed.is_(True)]
    if q.subject:
        subject = select(Subject.id).where(
            or_(func.lower(Subject.name) == q.subject.lower(), Subject.slug == q.subject)
        )
        conds.append(
            TutorProfile.user_id.in_(
                select(TutorSubject.tutor_id).where(TutorSubject.subject_id.in_(subject))
            )
        )
    if q.min_price is not None:
        conds.append(TutorProfile.hourly_rate_cents >= q.min_price)
    if q.max_price is not None:
        conds.append(TutorProfile.hourly_rate_cents <= q.max_price)
    if q.language:
        conds.append(
            TutorProfile.user_id.in_(
                select(TutorLanguage.tutor_id).where(TutorLanguage.language == q.language)
            )
        )
    if q.location:
        needle = q.location.lower()
        conds.append(
            or_(func.lower(TutorProfile.city) == needle, func.lower(TutorProfile.country) == needle)
        )
    if q.online:
        conds.append(TutorProfile.online_only.is_(True))
    if q.min_rating is not None:
        conds.append(TutorProfile.rating_avg >= q.min_rating)
    if q.free_from is not None and q.free_to is not None:
        a, b = epoch_minutes(q.free_from), epoch_minutes(q.free_to)
        w = AvailabilityWindow
        overlap = case((w.end_min < b, w.end_min), else_=b) - case(
            (w.start_min > a, w.start_min), else_=a
        )
        # Uncorrelated subqueries: one covering-index range scan (stored windows are at most
        # MAX_WINDOW_MINUTES long, which bounds start_min) and one scan of busy bookings.
        conds.append(
            TutorProfile.user_id.in_(
                select(w.tutor_id).where(
                    w.start_min > a - MAX_WINDOW_MINUTES,
                    w.start_min < b,
                    w.end_min > a,
                    overlap >= w.session_minutes,
                )
            )
        )
        conds.append(
            TutorProfile.user_id.not_in(
                select(Booking.tutor_id).where(
                    Booking.status.in_(ACTIVE_STATUSES),
                    Booking.start_at < q.free_to,
                    Booking.end_at > q.free_from,
                )
            )
        )
    return conds


_ORDERS = {
    # Each matches one index (walked forwards or backwards) so a page stops early.
    "rating": (
        TutorProfile.rating_avg.desc(),
        TutorProfile.rating_count.desc(),
        TutorProfile.user_id.desc(),
    ),
    "price": (TutorProfile.hourly_rate_cents.asc(), TutorProfile.user_id.asc()),
    "price_desc": (TutorProfile.hourly_rate_cents.desc(), TutorProfile.user_id.desc()),
    "newest": (TutorProfile.created_at.desc(), TutorProfile.user_id.desc()),
}


async def search_tutors(db: AsyncSession, q: SearchQuery) -> tuple[list[TutorCard], int]:
    """The page of tutors matching `q` and the total count (four queries in all)."""
    conds = _conditions(q)
    total = int(
        (await db.execute(select(func.count(TutorProfile.user_id)).where(*conds))).scalar_one()
    )
    if not total:
        return [], 0
    rows = await db.execute(
        select(User, TutorProfile)
        .join(User, User.id == TutorProfile.user_id)
        .where(*conds)
        .order_by(*_ORDERS[q.sort])
        .limit(q.per_page)
        .offset((q.page - 1) * q.per_page)
    )
    return await cards(db, [(u, p) for u, p in rows.all()]), total


def _photo_url(user: User) -> str | None:
    from panda.web.profile import photo_url

    return photo_url(user)


def card_json(card: TutorCard) -> dict[str, Any]:
    """The API shape of a tutor in search results and on the profile."""
    p = card.profile
    return {
        "id": card.user.id,
        "name": card.user.name,
        "headline": p.headline,
        "bio": card.user.bio,
        "subjects": card.subjects,
        "languages": card.languages,
        "hourly_rate": {"amount_cents": p.hourly_rate_cents, "currency": p.currency},
        "location": {"city": p.city, "country": p.country, "online_only": p.online_only},
        "timezone": card.user.timezone,
        "photo_url": _photo_url(card.user),
        "intro_video_url": p.intro_video_url,
        "session_minutes": p.session_minutes,
        "rating": {"average": round(p.rating_avg, 2), "count": p.rating_count},
        "url": f"/tutors/{card.user.id}",
    }
