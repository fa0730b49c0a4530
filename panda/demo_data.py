"""Realistic marketplace demo data: the demo tutor's profile and hours, and N bulk tutors."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.market.availability import WeeklyRule, open_windows, zone_of
from panda.market.tutors import (
    WINDOW_HORIZON,
    ensure_profile,
    ensure_subject,
    load_rules,
    rebuild_windows,
    replace_rules,
    set_languages,
    set_subjects,
)
from panda.market.tutors import window_rows as windows_for
from panda.store.models import (
    AvailabilityRule,
    AvailabilityWindow,
    Subject,
    TutorLanguage,
    TutorProfile,
    TutorSubject,
    User,
)
from panda.store.types import utcnow

SUBJECTS = (
    "Algebra",
    "Geometry",
    "Calculus",
    "Statistics",
    "Physics",
    "Chemistry",
    "Biology",
    "English",
    "Spanish",
    "French",
    "German",
    "Portuguese",
    "Mandarin",
    "History",
    "Geography",
    "Computer Science",
    "Python Programming",
    "Music Theory",
    "Piano",
    "Economics",
)
PLACES = (
    ("Lisbon", "Portugal", "Europe/Lisbon", "portuguese"),
    ("Berlin", "Germany", "Europe/Berlin", "german"),
    ("Madrid", "Spain", "Europe/Madrid", "spanish"),
    ("Paris", "France", "Europe/Paris", "french"),
    ("London", "United Kingdom", "Europe/London", "english"),
    ("Dublin", "Ireland", "Europe/Dublin", "english"),
    ("New York", "United States", "America/New_York", "english"),
    ("Chicago", "United States", "America/Chicago", "english"),
    ("Toronto", "Canada", "America/Toronto", "french"),
    ("Mexico City", "Mexico", "America/Mexico_City", "spanish"),
    ("São Paulo", "Brazil", "America/Sao_Paulo", "portuguese"),
    ("Nairobi", "Kenya", "Africa/Nairobi", "swahili"),
    ("Delhi", "India", "Asia/Kolkata", "hindi"),
    ("Singapore", "Singapore", "Asia/Singapore", "mandarin"),
    ("Sydney", "Australia", "Australia/Sydney", "english"),
    ("Tokyo", "Japan", "Asia/Tokyo", "japanese"),
)
FIRST = (
    "Ana",
    "Ben",
    "Chloé",
    "Diego",
    "Elif",
    "Farah",
    "Gustavo",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nina",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
)
LAST = (
    "Almeida",
    "Brown",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Hughes",
    "Ito",
    "Jensen",
    "Kowalski",
    "López",
    "Müller",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Usman",
    "Varga",
    "Wang",
    "Young",
    "Zhang",
)
HEADLINES = (
    "Patient {s} tutor for exams and homework",
    "{s} made clear, step by step",
    "Exam preparation in {s}, all levels",
    "Friendly {s} lessons for adults and teens",
    "University lecturer teaching {s}",
)
BLOCKS = ((8 * 60, 12 * 60), (13 * 60, 17 * 60), (17 * 60, 21 * 60), (9 * 60, 15 * 60))
DEMO_DOMAIN = "tutors.demo.panda.test"


async def _subject_ids(db: AsyncSession) -> dict[str, int]:
    for name in SUBJECTS:
        await ensure_subject(db, name)
    rows = await db.execute(select(Subject.name, Subject.id))
    return {name: sid for name, sid in rows}


async def prepare_demo_tutor(db: AsyncSession, tutor: User, student: User | None = None) -> None:
    """Give the demo tutor a profile, subjects and weekday hours (idempotent; no commit)."""
    ids = await _subject_ids(db)
    profile = await ensure_profile(db, tutor)
    if not profile.headline:
        profile.headline = "Maths and physics, explained with patience"
        profile.hourly_rate_cents = 4000
        profile.city, profile.country = "Lisbon", "Portugal"
        profile.online_only = True
        profile.min_notice_minutes = 60
        tutor.bio = tutor.bio or (
            "I have taught secondary and university maths for twelve years. "
            "Lessons are practical: we work on your own exercises."
        )
        await set_subjects(db, tutor.id, [ids["Algebra"], ids["Calculus"], ids["Physics"]])
        await set_languages(db, tutor.id, ["English", "Portuguese"])
    if not await load_rules(db, tutor.id):
        rules = [WeeklyRule(d, 9 * 60, 12 * 60) for d in range(5)]
        rules += [WeeklyRule(d, 14 * 60, 19 * 60) for d in range(5)]
        rules += [WeeklyRule(5, 10 * 60, 13 * 60)]
        await replace_rules(db, tutor.id, rules)
    await rebuild_windows(db, tutor)
    if student is not None and not student.interests:
        student.interests = ["Algebra", "Physics"]


async def extend_demo(db: AsyncSession, users: dict[str, User], booking: Any) -> None:
    """`panda demo` hook: the demo tutor gets a profile and hours, the student interests."""
    await prepare_demo_tutor(db, users["tutor"], users.get("student"))


def _chunks(rows: list[dict[str, Any]], size: int = 2000) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


async def create_many_tutors(db: AsyncSession, n: int, *, seed: int = 7) -> int:
    """Insert `n` approved tutors with profiles, subjects, languages, hours and search windows
    (bulk inserts; a few seconds for 10,000). Commits. Returns how many were created."""
    if n <= 0:
        return 0
    rng = random.Random(seed)
    subject_ids = await _subject_ids(db)
    await db.commit()
    existing = int(
        (
            await db.execute(select(func.count(User.id)).where(User.email.like(f"%@{DEMO_DOMAIN}")))
        ).scalar_one()
    )
    now = utcnow()
    users: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []
    for i in range(existing, existing + n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        city, country, tz, local_lang = rng.choice(PLACES)
        subjects = rng.sample(SUBJECTS, rng.randint(1, 3))
        users.append(
            {
                "email": f"tutor{i}@{DEMO_DOMAIN}",
                "name": f"{first} {last}",
                "password_hash": None,
                "role": "tutor",
                "timezone": tz,
                "bio": f"I teach {', '.join(subjects)} online from {city}.",
                "interests": [],
                "photo": None,
                "email_verified_at": now,
                "is_active": True,
                "tutor_status": "approved",
                "tutor_status_reason": None,
                "password_changed_at": now,
                "created_at": now - timedelta(days=rng.randint(0, 900)),
            }
        )
        count = rng.choice((0, 0, rng.randint(1, 5), rng.randint(5, 40), rng.randint(40, 200)))
        avg = round(rng.uniform(3.4, 5.0), 2) if count else 0.0
        langs = {"english", local_lang} if rng.random() < 0.7 else {local_lang}
        days = rng.sample(range(7), rng.randint(3, 6))
        blocks = rng.sample(BLOCKS, rng.randint(1, 2))
        extras.append(
            {
                "subjects": subjects,
                "langs": langs,
                "city": city,
                "country": country,
                "tz": tz,
                "rating_count": count,
                "rating_avg": avg,
                "rate": rng.randrange(1500, 12000, 500),
                "minutes": rng.choice((30, 45, 60, 60, 60, 90)),
                "online": rng.random() < 0.4,
                "rules": [WeeklyRule(d, s, e) for d in days for s, e in blocks],
            }
        )
    new_ids: list[int] = []
    for chunk in _chunks(users):
        result = await db.execute(
            insert(User).returning(User.id, sort_by_parameter_order=True), chunk
        )
        new_ids.extend(result.scalars().all())
    profiles, subj_rows, lang_rows, rule_rows, window_rows = [], [], [], [], []
    horizon_start, horizon_end = now - timedelta(days=1), now + WINDOW_HORIZON
    zones: dict[str, Any] = {}
    for uid, user, extra in zip(new_ids, users, extras, strict=True):
        profiles.append(
            {
                "user_id": uid,
                "headline": rng.choice(HEADLINES).format(s=extra["subjects"][0]),
                "hourly_rate_cents": extra["rate"],
                "currency": "EUR",
                "city": extra["city"],
                "country": extra["country"],
                "online_only": extra["online"],
                "intro_video_url": None,
                "session_minutes": extra["minutes"],
                "min_notice_minutes": 120,
                "buffer_minutes": rng.choice((0, 0, 15)),
                "max_moves": 2,
                "rating_sum": round(extra["rating_avg"] * extra["rating_count"]),
                "rating_count": extra["rating_count"],
                "rating_avg": extra["rating_avg"],
                "listed": True,
                "created_at": user["created_at"],
                "updated_at": now,
            }
        )
        subj_rows += [{"tutor_id": uid, "subject_id": subject_ids[s]} for s in extra["subjects"]]
        lang_rows += [{"tutor_id": uid, "language": lang} for lang in sorted(extra["langs"])]
        rule_rows += [
            {
                "tutor_id": uid,
                "weekday": r.weekday,
                "start_minute": r.start_minute,
                "end_minute": r.end_minute,
            }
            for r in extra["rules"]
        ]
        zone = zones.setdefault(extra["tz"], zone_of(extra["tz"]))
        window_rows += windows_for(
            uid,
            open_windows(extra["rules"], [], zone, horizon_start, horizon_end),
            extra["minutes"],
        )
    for model, rows in (
        (TutorProfile, profiles),
        (TutorSubject, subj_rows),
        (TutorLanguage, lang_rows),
        (AvailabilityRule, rule_rows),
        (AvailabilityWindow, window_rows),
    ):
        for chunk in _chunks(rows, 5000):
            await db.execute(insert(model), chunk)
    await db.commit()
    return len(new_ids)
