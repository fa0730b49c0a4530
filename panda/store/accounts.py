"""Account logic: input rules, single-use mailed tokens, verification, reset and invitations."""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from panda.passwords import hash_password_async, password_problem
from panda.store.models import ROLES, OneTimeToken, User, UserSession
from panda.store.types import utcnow
from panda.store.users import normalise_email

VERIFY_LIFETIME = timedelta(hours=24)
RESET_LIFETIME = timedelta(hours=1)
INVITE_LIFETIME = timedelta(days=7)
LIFETIMES = {"verify": VERIFY_LIFETIME, "reset": RESET_LIFETIME, "invite": INVITE_LIFETIME}

NAME_MAX = 120
BIO_MAX = 2000
INTEREST_MAX = 40
INTERESTS_MAX = 12
REASON_MAX = 1000
SIGNUP_ROLES = ("student", "tutor")
# Deliberately simple: one @, a dot in the domain, no spaces or angle brackets.
_EMAIL_RE = re.compile(r"^[^@\s<>\"'(),;:\\]+@[^@\s<>\"'(),;:\\]+\.[^@\s<>\"'(),;:\\]+$")


@cache
def timezone_names() -> tuple[str, ...]:
    """Every IANA zone name this machine knows, sorted, with UTC first."""
    names = sorted(
        z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))
    )
    return ("UTC", *names)


@cache
def timezone_groups() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Zones grouped by region (for <optgroup>s)."""
    groups: dict[str, list[str]] = {}
    for name in timezone_names()[1:]:
        groups.setdefault(name.split("/", 1)[0], []).append(name)
    return tuple((region, tuple(zones)) for region, zones in groups.items())


def is_timezone(name: str) -> bool:
    """True for a zone name we accept."""
    if name not in timezone_names():
        return False
    try:
        ZoneInfo(name)
    except Exception:
        return False
    return True


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf"} for c in text)


def clean_name(raw: str) -> tuple[str, str | None]:
    """A display name (trimmed, inner whitespace collapsed) and a problem, if any."""
    name = " ".join(raw.split())
    if not name:
        return name, "Please enter your name."
    if len(name) > NAME_MAX:
        return name, f"Use at most {NAME_MAX} characters."
    if _has_control_chars(name):
        return name, "The name contains characters we cannot accept."
    return name, None


def clean_email(raw: str) -> tuple[str, str | None]:
    """The normalised address and a problem, if any."""
    email = normalise_email(raw)
    if not email:
        return email, "Please enter your e-mail address."
    if len(email) > 254 or not _EMAIL_RE.match(email) or _has_control_chars(email):
        return email, "Please enter a valid e-mail address, like name@example.com."
    return email, None


def clean_bio(raw: str) -> tuple[str, str | None]:
    """Bio text: trimmed; length-limited."""
    bio = raw.replace("\r\n", "\n").strip()
    if len(bio) > BIO_MAX:
        return bio, f"Use at most {BIO_MAX} characters."
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in bio):
        return bio, "The text contains characters we cannot accept."
    return bio, None


def clean_interests(raw: str) -> tuple[list[str], str | None]:
    """Comma- or line-separated subjects: de-duplicated, each short."""
    items: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[,\n]", raw):
        item = " ".join(part.split())
        if not item:
            continue
        if len(item) > INTEREST_MAX:
            return items, f"Keep each subject under {INTEREST_MAX} characters."
        if _has_control_chars(item):
            return items, "The subjects contain characters we cannot accept."
        if item.lower() not in seen:
            seen.add(item.lower())
            items.append(item)
    if len(items) > INTERESTS_MAX:
        return items, f"List at most {INTERESTS_MAX} subjects."
    return items, None


@dataclass
class SignupData:
    """Validated sign-up input."""

    name: str
    email: str
    password: str
    role: str
    timezone: str


def validate_signup(form: dict[str, str]) -> tuple[SignupData, dict[str, str]]:
    """Check every sign-up field; return the cleaned data and the field errors."""
    errors: dict[str, str] = {}
    name, problem = clean_name(form.get("name", ""))
    if problem:
        errors["name"] = problem
    email, problem = clean_email(form.get("email", ""))
    if problem:
        errors["email"] = problem
    password = form.get("password", "")
    problem = password_problem(password, email=email, name=name)
    if problem:
        errors["password"] = problem
    role = form.get("role", "")
    if role not in SIGNUP_ROLES:
        errors["role"] = "Choose whether you want to learn or to teach."
    timezone = form.get("timezone", "").strip() or "UTC"
    if not is_timezone(timezone):
        errors["timezone"] = "Choose a time zone from the list."
    return SignupData(name, email, password, role, timezone), errors


# --- single-use tokens -------------------------------------------------------------------------


def hash_token(raw: str) -> str:
    """What we store for a mailed token: its SHA-256 (the token itself is never stored)."""
    return hashlib.sha256(raw.encode()).hexdigest()


async def create_token(db: AsyncSession, user: User, purpose: str) -> str:
    """A fresh random token for `purpose`; earlier unused tokens of that purpose stop working."""
    now = utcnow()
    await db.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.user_id == user.id,
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
        )
        .values(used_at=now)
    )
    raw = secrets.token_urlsafe(32)
    db.add(
        OneTimeToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=hash_token(raw),
            created_at=now,
            expires_at=now + LIFETIMES[purpose],
        )
    )
    await db.flush()
    return raw


def _plausible(raw: str) -> bool:
    return 20 <= len(raw) <= 100 and re.fullmatch(r"[A-Za-z0-9_-]+", raw) is not None


async def peek_token(db: AsyncSession, raw: str, purpose: str) -> User | None:
    """The user a valid, unused token belongs to, without using it up."""
    if not _plausible(raw):
        return None
    row = (
        await db.execute(
            select(User)
            .join(OneTimeToken, OneTimeToken.user_id == User.id)
            .where(
                OneTimeToken.token_hash == hash_token(raw),
                OneTimeToken.purpose == purpose,
                OneTimeToken.used_at.is_(None),
                OneTimeToken.expires_at > utcnow(),
            )
        )
    ).scalar_one_or_none()
    return row


async def consume_token(db: AsyncSession, raw: str, purpose: str) -> User | None:
    """Use the token up (atomically: two concurrent uses cannot both win); its user or None."""
    if not _plausible(raw):
        return None
    now = utcnow()
    token_hash = hash_token(raw)
    result = await db.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.token_hash == token_hash,
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(OneTimeToken.user_id)
    )
    user_id = result.scalar_one_or_none()
    if user_id is None:
        return None
    return await db.get(User, user_id)


# --- account changes ---------------------------------------------------------------------------


async def mark_verified(db: AsyncSession, user: User) -> bool:
    """Mark the address verified; False when it already was."""
    if user.email_verified_at is not None:
        return False
    user.email_verified_at = utcnow()
    await db.flush()
    return True


async def set_password(db: AsyncSession, user: User, password: str) -> datetime:
    """Store a new password hash; bearer tokens issued before now stop working."""
    user.password_hash = await hash_password_async(password)
    # Whole seconds, newer than any earlier value: tokens carry this stamp in seconds.
    now = utcnow().replace(microsecond=0)
    if int(user.password_changed_at.timestamp()) >= int(now.timestamp()):
        now = user.password_changed_at.replace(microsecond=0) + timedelta(seconds=1)
    user.password_changed_at = now
    await db.flush()
    return now


async def email_taken(db: AsyncSession, email: str) -> bool:
    """True when an account uses this address."""
    count = (
        await db.execute(select(func.count(User.id)).where(User.email == normalise_email(email)))
    ).scalar_one()
    return bool(count)


def clean_role(raw: str, allowed: tuple[str, ...] = ROLES) -> str | None:
    """The role when it is one of `allowed`."""
    return raw if raw in allowed else None


async def search_users(
    db: AsyncSession,
    *,
    query: str = "",
    role: str = "",
    status: str = "",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[User], int]:
    """Users matching a name/e-mail search and filters, newest first, and the total count."""
    conditions = []
    if query:
        # LIKE wildcards in the search text are matched literally.
        escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        conditions.append(
            or_(
                func.lower(User.name).like(pattern, escape="\\"),
                User.email.like(pattern, escape="\\"),
            )
        )
    if role in ROLES:
        conditions.append(User.role == role)
    if status == "active":
        conditions.append(User.is_active.is_(True))
    elif status == "inactive":
        conditions.append(User.is_active.is_(False))
    elif status == "pending":
        conditions.append(User.tutor_status == "pending")
    elif status == "unverified":
        conditions.append(User.email_verified_at.is_(None))
    total = (await db.execute(select(func.count(User.id)).where(*conditions))).scalar_one()
    users = (
        (
            await db.execute(
                select(User)
                .where(*conditions)
                .order_by(User.created_at.desc(), User.id.desc())
                .limit(limit)
                .offset(offset)
            )
        )
        .scalars()
        .all()
    )
    return list(users), int(total)


async def pending_tutors(db: AsyncSession) -> list[User]:
    """Tutors waiting for approval, oldest first."""
    return list(
        (
            await db.execute(
                select(User)
                .where(User.role == "tutor", User.tutor_status == "pending")
                .order_by(User.created_at, User.id)
            )
        )
        .scalars()
        .all()
    )


async def role_counts(db: AsyncSession) -> dict[str, int]:
    """How many active accounts per role."""
    rows = (
        await db.execute(
            select(User.role, func.count(User.id))
            .where(User.is_active.is_(True))
            .group_by(User.role)
        )
    ).all()
    counts = {role: 0 for role in ROLES}
    counts.update({str(r): int(c) for r, c in rows})
    return counts


async def active_sessions(db: AsyncSession, user_id: int, lifetime: timedelta) -> list[UserSession]:
    """The user's live login sessions, most recently used first."""
    return list(
        (
            await db.execute(
                select(UserSession)
                .where(
                    UserSession.user_id == user_id,
                    UserSession.revoked_at.is_(None),
                    UserSession.created_at > utcnow() - lifetime,
                )
                .order_by(UserSession.last_seen_at.desc())
            )
        )
        .scalars()
        .all()
    )


def describe_user_agent(agent: str | None) -> str:
    """A short human name for a browser's User-Agent ("Firefox on Windows")."""
    ua = agent or ""
    browser = next(
        (
            name
            for token, name in (
                ("Edg/", "Edge"),
                ("OPR/", "Opera"),
                ("Firefox/", "Firefox"),
                ("Chrome/", "Chrome"),
                ("Chromium/", "Chromium"),
                ("Safari/", "Safari"),
                ("curl/", "curl"),
                ("python", "a script"),
            )
            if token.lower() in ua.lower()
        ),
        "A browser",
    )
    system = next(
        (
            name
            for token, name in (
                ("Android", "Android"),
                ("iPhone", "iPhone"),
                ("iPad", "iPad"),
                ("Windows", "Windows"),
                ("Mac OS X", "macOS"),
                ("CrOS", "ChromeOS"),
                ("Linux", "Linux"),
            )
            if token in ua
        ),
        "",
    )
    return f"{browser} on {system}" if system else browser
