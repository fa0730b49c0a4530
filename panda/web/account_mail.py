"""The account mails: verification, welcome, password reset and change, invitations, decisions."""

from __future__ import annotations

from aiohttp import web

from panda import keys
from panda.store.models import User

SIGNATURE = "\n\n— The Panda Professor team\n"


def link(app: web.Application, path: str) -> str:
    """A full link on our public address."""
    return app[keys.settings].base_url.rstrip("/") + path


async def _send(app: web.Application, user: User, subject: str, body: str) -> bool:
    return await app[keys.mailer].send(
        user.email, subject, f"Hello {user.name},\n\n{body}{SIGNATURE}"
    )


async def send_verification(app: web.Application, user: User, token: str) -> bool:
    """The link that confirms the address (valid 24 hours)."""
    url = link(app, f"/verify/{token}")
    return await _send(
        app,
        user,
        "Confirm your e-mail address",
        "Welcome to Panda Professor! Please confirm your e-mail address by opening this link:\n\n"
        f"{url}\n\nThe link works once and expires in 24 hours. If you did not sign up, "
        "you can ignore this message.",
    )


async def send_verified(app: web.Application, user: User) -> bool:
    """Confirmation that the address is verified."""
    extra = (
        "Our team reviews every new tutor; we will write to you as soon as your profile is "
        "approved."
        if user.is_tutor and user.tutor_status == "pending"
        else "You can now book sessions and join calls."
    )
    return await _send(
        app,
        user,
        "You are verified",
        f"Your e-mail address is verified. {extra}\n\nLog in: {link(app, '/login')}",
    )


async def send_reset(app: web.Application, user: User, token: str) -> bool:
    """The password reset link (valid 1 hour)."""
    url = link(app, f"/password/reset/{token}")
    return await _send(
        app,
        user,
        "Reset your password",
        "Someone (hopefully you) asked to reset the password of your Panda Professor account. "
        f"Choose a new password here:\n\n{url}\n\nThe link works once and expires in 1 hour. "
        "If you did not ask for this, ignore this message: your password stays the same.",
    )


async def send_password_changed(app: web.Application, user: User) -> bool:
    """Notice after a password change or reset."""
    return await _send(
        app,
        user,
        "Your password was changed",
        "The password of your Panda Professor account was just changed, and every other "
        "signed-in device was logged out.\n\nIf this was not you, reset your password now: "
        f"{link(app, '/password/forgot')}",
    )


async def send_invitation(app: web.Application, user: User, token: str, inviter: User) -> bool:
    """An account created by an admin: the link to choose a password (valid 7 days)."""
    url = link(app, f"/invite/{token}")
    role = "a tutor" if user.is_tutor else "a student" if user.is_student else "an administrator"
    return await _send(
        app,
        user,
        "Your Panda Professor account is ready",
        f"{inviter.name} created a Panda Professor account for you as {role}. Choose your "
        f"password to start:\n\n{url}\n\nThe link works once and expires in 7 days.",
    )


async def send_tutor_decision(
    app: web.Application, user: User, approved: bool, reason: str
) -> bool:
    """The outcome of the tutor review, with the admin's reason."""
    if approved:
        body = (
            "Good news: your tutor profile is approved. Students can now find and book you."
            + (f"\n\nNote from our team: {reason}" if reason else "")
            + f"\n\nYour dashboard: {link(app, '/dashboard')}"
        )
        return await _send(app, user, "Your tutor profile is approved", body)
    body = (
        "Thank you for applying to teach on Panda Professor. We cannot approve your tutor "
        f"profile at this time.\n\nReason: {reason}\n\nYou can update your profile and reply to "
        "this message if you would like us to look again."
    )
    return await _send(app, user, "About your tutor application", body)
