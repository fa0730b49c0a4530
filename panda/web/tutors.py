"""Tutor search, public profiles, free slots, and the tutor's own profile and availability."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select

from panda import keys
from panda.errors import NotFound, ValidationError
from panda.market import booking as bookings
from panda.market.availability import (
    WEEKDAYS,
    DateException,
    WeeklyRule,
    format_hhmm,
    is_valid_zone,
    iso_utc,
    parse_hhmm,
)
from panda.market.reviews import list_reviews
from panda.market.search import card_json, parse_query, search_tutors
from panda.market.tutors import (
    ensure_profile,
    get_public_tutor,
    list_subjects,
    load_exceptions,
    load_rules,
    rebuild_windows,
    replace_rules,
    set_languages,
    set_subjects,
    tutor_language_names,
    tutor_subject_names,
)
from panda.store.models import SESSION_LENGTHS, AvailabilityException, User
from panda.store.types import utcnow
from panda.web.auth import current_user, require_role
from panda.web.forms import read_form, read_json
from panda.web.market_common import day_groups, instant, int_param, money
from panda.web.render import NAV_EXTRA_KEY, render

MAX_SLOT_RANGE = timedelta(days=31)
CURRENCIES = ("EUR", "USD", "GBP", "CHF")

_TUTOR = {"$ref": "#/components/schemas/Tutor"}
_ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _q(name: str, desc: str, typ: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": desc,
        "schema": {"type": typ},
    }


OPENAPI_SCHEMAS: dict[str, Any] = {
    "Tutor": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "headline": {"type": "string"},
            "subjects": {"type": "array", "items": {"type": "string"}},
            "languages": {"type": "array", "items": {"type": "string"}},
            "hourly_rate": {"type": "object"},
            "rating": {"type": "object"},
            "session_minutes": {"type": "integer"},
        },
    },
    "Slot": {
        "type": "object",
        "properties": {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
        },
    },
}
OPENAPI: dict[str, Any] = {
    "/api/tutors": {
        "get": {
            "summary": "Search approved tutors",
            "security": [],
            "parameters": [
                _q("subject", "Subject name or slug"),
                _q("min_price", "Minimum hourly rate", "number"),
                _q("max_price", "Maximum hourly rate", "number"),
                _q("language", "Teaching language"),
                _q("location", "City or country"),
                _q("online", "Online-only tutors (1)"),
                _q("min_rating", "Minimum average rating", "number"),
                _q("free_from", "Free window start (ISO 8601)"),
                _q("free_to", "Free window end (ISO 8601)"),
                _q("sort", "rating | price | price_desc | newest"),
                _q("page", "Page number", "integer"),
                _q("per_page", "Results per page (max 50)", "integer"),
            ],
            "responses": {
                "200": {"description": '{"items": [Tutor], "total": n, "page": p}'},
                "422": {"description": "Bad filter", **_ERR},
            },
        }
    },
    "/api/tutors/{tutor_id}": {
        "get": {
            "summary": "A tutor's public profile with recent reviews",
            "security": [],
            "responses": {"200": {"description": "Tutor"}, "404": {"description": "Unknown"}},
        }
    },
    "/api/tutors/{tutor_id}/slots": {
        "get": {
            "summary": "Free slots in [from, to) (UTC, ISO 8601; at most 31 days)",
            "security": [],
            "parameters": [_q("from", "Range start"), _q("to", "Range end")],
            "responses": {
                "200": {"description": '{"slots": [{"start", "end"}]}'},
                "422": {"description": "Bad range", **_ERR},
            },
        }
    },
    "/api/tutor/profile": {
        "get": {
            "summary": "The logged-in tutor's own profile",
            "responses": {"200": {"description": "Tutor"}},
        },
        "put": {
            "summary": "Update the logged-in tutor's profile",
            "responses": {
                "200": {"description": "Tutor"},
                "422": {"description": "Invalid", **_ERR},
            },
        },
    },
    "/api/tutor/availability": {
        "get": {
            "summary": "Weekly rules and date exceptions",
            "responses": {"200": {"description": "Availability"}},
        },
        "put": {
            "summary": "Replace weekly rules and exceptions",
            "responses": {
                "200": {"description": "Availability"},
                "422": {"description": "Invalid", **_ERR},
            },
        },
    },
    "/api/subjects": {
        "get": {
            "summary": "Subjects tutors can teach",
            "security": [],
            "responses": {"200": {"description": '{"items": [{"id", "name", "slug"}]}'}},
        }
    },
}


# ---------------------------------------------------------------- search


async def _search(request: web.Request) -> tuple[Any, list[Any], int]:
    viewer = current_user(request)
    q = parse_query(request.query, tz=viewer.timezone if viewer else "UTC")
    async with request.app[keys.sessionmaker]() as db:
        if q.errors:
            return q, [], 0
        results, total = await search_tutors(db, q)
    return q, results, total


async def search_page(request: web.Request) -> web.StreamResponse:
    """Find a tutor: filters, sort, pages."""
    q, results, total = await _search(request)
    async with request.app[keys.sessionmaker]() as db:
        subjects = await list_subjects(db)
    pages = max(1, -(-total // q.per_page))
    params = {k: v for k, v in request.query.items() if k != "page"}
    return render(
        request,
        "tutors/search.html",
        {
            "q": q,
            "results": results,
            "total": total,
            "subjects": subjects,
            "pages": pages,
            "params": params,
        },
        status=422 if q.errors else 200,
    )


async def search_api(request: web.Request) -> web.Response:
    """JSON twin of /tutors."""
    q, results, total = await _search(request)
    if q.errors:
        raise ValidationError("Some search filters are invalid.", fields=q.errors)
    return web.json_response(
        {
            "items": [card_json(c) for c in results],
            "total": total,
            "page": q.page,
            "per_page": q.per_page,
        }
    )


async def subjects_api(request: web.Request) -> web.Response:
    """Active subjects."""
    async with request.app[keys.sessionmaker]() as db:
        subjects = await list_subjects(db)
    return web.json_response(
        {"items": [{"id": s.id, "name": s.name, "slug": s.slug} for s in subjects]}
    )


# ---------------------------------------------------------------- profile and slots


async def profile_page(request: web.Request) -> web.StreamResponse:
    """A tutor's public page: profile, rating, reviews, next free slots."""
    tutor_id = int_param(request.match_info["tutor_id"], "tutor")
    viewer = current_user(request)
    now = utcnow()
    async with request.app[keys.sessionmaker]() as db:
        card = await get_public_tutor(db, tutor_id)
        slots = await bookings.free_slots(
            db,
            card.user,
            card.profile,
            now,
            now + timedelta(days=7),
            now=now,
            student_id=viewer.id if viewer and viewer.is_student else None,
        )
        reviews = await list_reviews(db, tutor_id, limit=20)
    return render(
        request,
        "tutors/profile.html",
        {
            "card": card,
            "slot_days": day_groups(slots[:60], viewer),
            "reviews": reviews,
            "iso_utc": iso_utc,
        },
    )


async def profile_api(request: web.Request) -> web.Response:
    """JSON twin of /tutors/<id>."""
    tutor_id = int_param(request.match_info["tutor_id"], "tutor")
    async with request.app[keys.sessionmaker]() as db:
        card = await get_public_tutor(db, tutor_id)
        reviews = await list_reviews(db, tutor_id, limit=20)
    data = card_json(card)
    data["reviews"] = [
        {
            "rating": r.rating,
            "text": r.text,
            "reply": r.reply,
            "created_at": iso_utc(r.created_at),
            "student_name": name,
        }
        for r, name in reviews
    ]
    return web.json_response(data)


async def slots_api(request: web.Request) -> web.Response:
    """Free slots of a tutor between from and to (UTC)."""
    tutor_id = int_param(request.match_info["tutor_id"], "tutor")
    now = utcnow()
    start = instant(request.query["from"], "from") if "from" in request.query else now
    end = instant(request.query["to"], "to") if "to" in request.query else start + timedelta(days=7)
    if end <= start:
        raise ValidationError("'to' must be after 'from'.", fields={"to": "After from."})
    if end - start > MAX_SLOT_RANGE:
        raise ValidationError("Ask for at most 31 days of slots.", fields={"to": "Too far."})
    viewer = current_user(request)
    async with request.app[keys.sessionmaker]() as db:
        card = await get_public_tutor(db, tutor_id)
        slots = await bookings.free_slots(
            db,
            card.user,
            card.profile,
            start,
            end,
            now=now,
            student_id=viewer.id if viewer and viewer.is_student else None,
        )
    return web.json_response(
        {
            "tutor_id": tutor_id,
            "session_minutes": card.profile.session_minutes,
            "slots": [{"start": iso_utc(s), "end": iso_utc(e)} for s, e in slots],
        }
    )


# ---------------------------------------------------------------- tutor's own profile


def _profile_values(
    data: dict[str, Any], subject_ids: set[int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate profile fields from a form or JSON; (values, field errors)."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    headline = str(data.get("headline", "")).strip()
    if len(headline) > 160:
        errors["headline"] = "At most 160 characters."
    values["headline"] = headline[:160]
    bio = str(data.get("bio", "")).strip()
    if len(bio) > 5000:
        errors["bio"] = "At most 5000 characters."
    values["bio"] = bio[:5000]
    try:
        rate = round(float(str(data.get("hourly_rate", "30")).strip() or "0") * 100)
        if not 0 <= rate <= 10_000_000:
            raise ValueError
        values["hourly_rate_cents"] = rate
    except ValueError:
        errors["hourly_rate"] = "Enter an hourly rate like 30 or 42.50."
    currency = str(data.get("currency", "EUR")).upper()
    if currency not in CURRENCIES:
        errors["currency"] = f"One of {', '.join(CURRENCIES)}."
    values["currency"] = currency
    values["city"] = str(data.get("city", "")).strip()[:80]
    values["country"] = str(data.get("country", "")).strip()[:80]
    values["online_only"] = data.get("online_only") in (True, "1", "on", "true", "yes")
    video = str(data.get("intro_video_url", "") or "").strip()
    if video and not video.startswith("https://"):
        errors["intro_video_url"] = "Use an https:// link."
    values["intro_video_url"] = video[:300] or None
    tz = str(data.get("timezone", "UTC")).strip()
    if not is_valid_zone(tz):
        errors["timezone"] = "Pick a time zone like Europe/Berlin."
    values["timezone"] = tz
    ints = {
        "session_minutes": SESSION_LENGTHS,
        "min_notice_minutes": range(0, 10081),
        "buffer_minutes": (0, 15, 30),
        "max_moves": range(0, 11),
    }
    for name, allowed in ints.items():
        try:
            number = int(str(data.get(name, "")).strip())
            if number not in allowed:
                raise ValueError
            values[name] = number
        except ValueError:
            errors[name] = {
                "session_minutes": "Choose 30, 45, 60 or 90 minutes.",
                "min_notice_minutes": "Between 0 and 10080 minutes (a week).",
                "buffer_minutes": "Choose 0, 15 or 30 minutes.",
                "max_moves": "Between 0 and 10.",
            }[name]
    raw_subjects = data.get("subjects", [])
    if isinstance(raw_subjects, str):
        raw_subjects = [raw_subjects]
    try:
        chosen = {int(x) for x in raw_subjects}
    except (TypeError, ValueError):
        chosen = set()
        errors["subjects"] = "Choose subjects from the list."
    if not chosen <= subject_ids:
        errors["subjects"] = "Choose subjects from the list."
    values["subjects"] = sorted(chosen)
    langs = data.get("languages", "")
    if isinstance(langs, str):
        langs = [x for x in langs.split(",")]
    values["languages"] = [str(x).strip() for x in langs if str(x).strip()][:10]
    values["listed"] = data.get("listed", True) in (True, "1", "on", "true", "yes")
    return values, errors


async def _apply_profile(db: Any, tutor: User, values: dict[str, Any]) -> None:
    profile = await ensure_profile(db, tutor)
    user = await db.get(User, tutor.id)
    user.bio = values["bio"]
    user.timezone = values["timezone"]
    for name in (
        "headline",
        "hourly_rate_cents",
        "currency",
        "city",
        "country",
        "online_only",
        "intro_video_url",
        "session_minutes",
        "min_notice_minutes",
        "buffer_minutes",
        "max_moves",
        "listed",
    ):
        setattr(profile, name, values[name])
    profile.updated_at = utcnow()
    await set_subjects(db, tutor.id, values["subjects"])
    await set_languages(db, tutor.id, values["languages"])
    # Windows carry the zone's offsets and the session length: rebuild on every save.
    await db.flush()
    await rebuild_windows(db, user)


async def _own_profile_context(db: Any, tutor: User) -> dict[str, Any]:
    profile = await ensure_profile(db, tutor)
    subjects = await list_subjects(db)
    mine = set((await tutor_subject_names(db, [tutor.id]))[tutor.id])
    langs = (await tutor_language_names(db, [tutor.id]))[tutor.id]
    await db.commit()
    return {
        "profile": profile,
        "subjects": subjects,
        "mine": mine,
        "languages": ", ".join(langs),
        "lengths": SESSION_LENGTHS,
        "currencies": CURRENCIES,
        "tutor": tutor,
    }


async def edit_profile_page(request: web.Request) -> web.StreamResponse:
    """The tutor edits what students see."""
    tutor = require_role(request, "tutor")
    async with request.app[keys.sessionmaker]() as db:
        ctx = await _own_profile_context(db, tutor)
    return render(request, "tutors/edit.html", {**ctx, "errors": {}, "form": None})


async def edit_profile_submit(request: web.Request) -> web.StreamResponse:
    """Save the tutor's profile."""
    tutor = require_role(request, "tutor")
    post = await request.post()
    data: dict[str, Any] = {k: v for k, v in (await read_form(request)).items()}
    data["subjects"] = [v for v in post.getall("subjects", []) if isinstance(v, str)]
    data.setdefault("online_only", "")
    data.setdefault("listed", "")
    async with request.app[keys.sessionmaker]() as db:
        subject_ids = {s.id for s in await list_subjects(db)}
        values, errors = _profile_values(data, subject_ids)
        if errors:
            ctx = await _own_profile_context(db, tutor)
            return render(
                request, "tutors/edit.html", {**ctx, "errors": errors, "form": data}, status=422
            )
        await _apply_profile(db, tutor, values)
        await db.commit()
    from panda.web.auth import flash

    flash(request, "Your profile is saved.", "success")
    raise web.HTTPSeeOther("/tutor/profile")


async def own_profile_api(request: web.Request) -> web.Response:
    """GET/PUT the logged-in tutor's profile as JSON."""
    tutor = require_role(request, "tutor")
    async with request.app[keys.sessionmaker]() as db:
        if request.method == "PUT":
            data = await read_json(request)
            subject_ids = {s.id for s in await list_subjects(db)}
            profile = await ensure_profile(db, tutor)
            base = {
                "headline": profile.headline,
                "bio": tutor.bio,
                "hourly_rate": profile.hourly_rate_cents / 100,
                "currency": profile.currency,
                "city": profile.city,
                "country": profile.country,
                "online_only": profile.online_only,
                "intro_video_url": profile.intro_video_url,
                "timezone": tutor.timezone,
                "session_minutes": profile.session_minutes,
                "min_notice_minutes": profile.min_notice_minutes,
                "buffer_minutes": profile.buffer_minutes,
                "max_moves": profile.max_moves,
                "subjects": [],
                "languages": [],
                "listed": profile.listed,
            }
            base.update(data)
            values, errors = _profile_values(base, subject_ids)
            if errors:
                raise ValidationError("Some profile fields are invalid.", fields=errors)
            await _apply_profile(db, tutor, values)
            await db.commit()
        await ensure_profile(db, tutor)
        await db.commit()
        row = await db.get(User, tutor.id)
        assert row is not None
        from panda.market.tutors import cards
        from panda.store.models import TutorProfile

        prof = await db.get(TutorProfile, tutor.id)
        assert prof is not None
        card = (await cards(db, [(row, prof)]))[0]
    data = card_json(card)
    data.update(
        {
            "min_notice_minutes": card.profile.min_notice_minutes,
            "buffer_minutes": card.profile.buffer_minutes,
            "max_moves": card.profile.max_moves,
            "listed": card.profile.listed,
        }
    )
    return web.json_response(data)


# ---------------------------------------------------------------- availability


def parse_ranges(text: str) -> list[tuple[int, int]] | None:
    """ "09:00-12:00, 14:00-18:00" -> minute ranges on the 15-minute grid; None if malformed."""
    out: list[tuple[int, int]] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" not in part:
            return None
        a, b = part.split("-", 1)
        start, end = parse_hhmm(a), parse_hhmm(b)
        if start is None or end is None or start >= end or start % 15 or end % 15:
            return None
        out.append((start, end))
    return out


def _availability_json(rules: list[Any], exceptions: list[Any]) -> dict[str, Any]:
    return {
        "weekly": [
            {
                "weekday": r.weekday,
                "start": format_hhmm(r.start_minute),
                "end": format_hhmm(r.end_minute),
            }
            for r in rules
        ],
        "exceptions": [
            {
                "id": e.id,
                "date": e.day.isoformat(),
                "kind": e.kind,
                "start": format_hhmm(e.start_minute) if e.start_minute is not None else None,
                "end": format_hhmm(e.end_minute) if e.end_minute is not None else None,
            }
            for e in exceptions
        ],
    }


async def availability_page(request: web.Request) -> web.StreamResponse:
    """The tutor's weekly hours and date exceptions."""
    tutor = require_role(request, "tutor")
    async with request.app[keys.sessionmaker]() as db:
        profile = await ensure_profile(db, tutor)
        await db.commit()
        rules = await load_rules(db, tutor.id)
        exceptions = await load_exceptions(db, tutor.id, start=utcnow().date() - timedelta(days=1))
    by_day = {
        d: ", ".join(
            f"{format_hhmm(r.start_minute)}-{format_hhmm(r.end_minute)}"
            for r in rules
            if r.weekday == d
        )
        for d in range(7)
    }
    return render(
        request,
        "tutors/availability.html",
        {
            "weekdays": WEEKDAYS,
            "by_day": by_day,
            "exceptions": exceptions,
            "errors": {},
            "profile": profile,
            "format_hhmm": format_hhmm,
            "tutor": tutor,
        },
    )


async def availability_submit(request: web.Request) -> web.StreamResponse:
    """Save the weekly hours."""
    tutor = require_role(request, "tutor")
    form = await read_form(request)
    errors: dict[str, str] = {}
    new_rules: list[WeeklyRule] = []
    for d in range(7):
        ranges = parse_ranges(form.get(f"day{d}", ""))
        if ranges is None:
            errors[f"day{d}"] = "Write hours like 09:00-12:00, 14:00-18:00 (quarter hours)."
            continue
        new_rules.extend(WeeklyRule(d, s, e) for s, e in ranges)
    async with request.app[keys.sessionmaker]() as db:
        if errors:
            profile = await ensure_profile(db, tutor)
            exceptions = await load_exceptions(db, tutor.id, start=utcnow().date())
            by_day = {d: form.get(f"day{d}", "") for d in range(7)}
            return render(
                request,
                "tutors/availability.html",
                {
                    "weekdays": WEEKDAYS,
                    "by_day": by_day,
                    "exceptions": exceptions,
                    "errors": errors,
                    "profile": profile,
                    "format_hhmm": format_hhmm,
                    "tutor": tutor,
                },
                status=422,
            )
        await replace_rules(db, tutor.id, new_rules)
        await rebuild_windows(db, tutor)
        await db.commit()
    from panda.web.auth import flash

    flash(request, "Your weekly hours are saved.", "success")
    raise web.HTTPSeeOther("/tutor/availability")


def _exception_from(data: dict[str, Any]) -> tuple[DateException | None, dict[str, str]]:
    errors: dict[str, str] = {}
    try:
        day = date.fromisoformat(str(data.get("date", "")).strip())
    except ValueError:
        return None, {"date": "Pick a date."}
    kind = str(data.get("kind", "off"))
    if kind not in ("off", "extra"):
        errors["kind"] = "Day off or extra hours."
    start_raw, end_raw = str(data.get("start", "") or ""), str(data.get("end", "") or "")
    start = parse_hhmm(start_raw) if start_raw else None
    end = parse_hhmm(end_raw) if end_raw else None
    if (start_raw and start is None) or (end_raw and end is None):
        errors["start"] = "Use HH:MM."
    if (start is None) != (end is None) or (start is not None and end is not None and start >= end):
        errors["start"] = "Give both times, the start before the end (or neither for a whole day)."
    if kind == "extra" and start is None:
        errors["start"] = "Extra hours need a start and an end."
    if start is not None and (start % 15 or (end or 0) % 15):
        errors["start"] = "Use quarter hours (:00, :15, :30, :45)."
    if errors:
        return None, errors
    return DateException(day, kind, start, end), {}


async def exception_add(request: web.Request) -> web.StreamResponse:
    """Add a date exception."""
    tutor = require_role(request, "tutor")
    form = await read_form(request)
    exc, errors = _exception_from(form)
    from panda.web.auth import flash

    if exc is None:
        flash(request, " ".join(errors.values()), "error")
        raise web.HTTPSeeOther("/tutor/availability")
    async with request.app[keys.sessionmaker]() as db:
        db.add(
            AvailabilityException(
                tutor_id=tutor.id,
                day=exc.day,
                kind=exc.kind,
                start_minute=exc.start_minute,
                end_minute=exc.end_minute,
            )
        )
        await db.flush()
        await rebuild_windows(db, tutor)
        await db.commit()
    flash(request, "Exception added.", "success")
    raise web.HTTPSeeOther("/tutor/availability")


async def exception_delete(request: web.Request) -> web.StreamResponse:
    """Remove a date exception."""
    tutor = require_role(request, "tutor")
    exc_id = int_param(request.match_info["exc_id"], "exception")
    async with request.app[keys.sessionmaker]() as db:
        result = await db.execute(
            delete(AvailabilityException).where(
                AvailabilityException.id == exc_id, AvailabilityException.tutor_id == tutor.id
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound("We could not find that exception.")
        await rebuild_windows(db, tutor)
        await db.commit()
    raise web.HTTPSeeOther("/tutor/availability")


async def availability_api(request: web.Request) -> web.Response:
    """GET/PUT weekly rules and exceptions as JSON."""
    tutor = require_role(request, "tutor")
    async with request.app[keys.sessionmaker]() as db:
        if request.method == "PUT":
            data = await read_json(request)
            weekly = data.get("weekly", [])
            exceptions = data.get("exceptions", [])
            if not isinstance(weekly, list) or not isinstance(exceptions, list):
                raise ValidationError("weekly and exceptions must be lists.")
            new_rules: list[WeeklyRule] = []
            for i, item in enumerate(weekly):
                if not isinstance(item, dict):
                    raise ValidationError(f"weekly[{i}] must be an object.")
                wd = item.get("weekday")
                s, e = parse_hhmm(str(item.get("start", ""))), parse_hhmm(str(item.get("end", "")))
                if (
                    not isinstance(wd, int)
                    or not 0 <= wd <= 6
                    or s is None
                    or e is None
                    or s >= e
                    or s % 15
                    or e % 15
                ):
                    raise ValidationError(
                        f"weekly[{i}] needs weekday 0-6 and start < end as HH:MM quarter hours.",
                        fields={f"weekly[{i}]": "Invalid"},
                    )
                new_rules.append(WeeklyRule(wd, s, e))
            parsed: list[DateException] = []
            for i, item in enumerate(exceptions):
                if not isinstance(item, dict):
                    raise ValidationError(f"exceptions[{i}] must be an object.")
                exc, errs = _exception_from(item)
                if exc is None:
                    raise ValidationError(f"exceptions[{i}] is invalid.", fields=errs)
                parsed.append(exc)
            await replace_rules(db, tutor.id, new_rules)
            await db.execute(
                delete(AvailabilityException).where(AvailabilityException.tutor_id == tutor.id)
            )
            for exc in parsed:
                db.add(
                    AvailabilityException(
                        tutor_id=tutor.id,
                        day=exc.day,
                        kind=exc.kind,
                        start_minute=exc.start_minute,
                        end_minute=exc.end_minute,
                    )
                )
            await db.flush()
            await rebuild_windows(db, tutor)
            await db.commit()
        rules = await load_rules(db, tutor.id)
        excs = list(
            (
                await db.execute(
                    select(AvailabilityException)
                    .where(AvailabilityException.tutor_id == tutor.id)
                    .order_by(AvailabilityException.day)
                )
            ).scalars()
        )
    return web.json_response(_availability_json(rules, excs))


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app[keys.templates].filters["money"] = money
    app.setdefault(NAV_EXTRA_KEY, []).append({"href": "/tutors", "label": "Tutors", "role": ""})
    app.router.add_get("/tutors", search_page, name="tutors")
    app.router.add_get("/tutors/{tutor_id}", profile_page, name="tutor_profile")
    app.router.add_get("/tutor/profile", edit_profile_page)
    app.router.add_post("/tutor/profile", edit_profile_submit)
    app.router.add_get("/tutor/availability", availability_page)
    app.router.add_post("/tutor/availability", availability_submit)
    app.router.add_post("/tutor/availability/exceptions", exception_add)
    app.router.add_post("/tutor/availability/exceptions/{exc_id}/delete", exception_delete)
    app.router.add_get("/api/tutors", search_api)
    app.router.add_get("/api/subjects", subjects_api)
    app.router.add_get("/api/tutors/{tutor_id}", profile_api)
    app.router.add_get("/api/tutors/{tutor_id}/slots", slots_api)
    app.router.add_route("GET", "/api/tutor/profile", own_profile_api)
    app.router.add_route("PUT", "/api/tutor/profile", own_profile_api)
    app.router.add_route("GET", "/api/tutor/availability", availability_api)
    app.router.add_route("PUT", "/api/tutor/availability", availability_api)
