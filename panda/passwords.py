"""Password hashing (argon2id) and the password rules."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 256
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

# The most common passwords of at least MIN_LENGTH characters (lowercased).
COMMON_PASSWORDS = frozenset(
    """
    1234567890 12345678910 123456789a 0123456789 1q2w3e4r5t qwertyuiop 1qaz2wsx3edc
    password123 password12 password1! passw0rd123 iloveyou123 qwerty1234 qwerty12345
    abcdefghij abc1234567 1111111111 0000000000 9876543210 aaaaaaaaaa zaq12wsxcde
    letmein123 welcome123 football123 baseball123 superman123 princess123 sunshine123
    trustno1234 administrator changeme123 password2024 password2025 password2026
    qazwsxedcrfv 1234qwerasdf asdfghjkl; asdfghjkl123 monkey12345 dragon12345
    pandaprofessor tutoring123 student123 teacher123
    """.split()
)


def password_problem(password: str, *, email: str = "", name: str = "") -> str | None:
    """Why `password` is not acceptable, or None when it is."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or len(set(lowered)) <= 2:
        return "That password is too common; choose something harder to guess."
    local = email.split("@", 1)[0].lower()
    if local and len(local) >= 4 and lowered == local:
        return "Do not use your e-mail address as your password."
    if name and lowered == name.lower().replace(" ", ""):
        return "Do not use your name as your password."
    return None


def hash_password(password: str) -> str:
    """argon2id hash (blocking: call through `hash_password_async` on the event loop)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; never raises on a malformed hash."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    """Hash in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """Verify in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(verify_password, password_hash, password)
