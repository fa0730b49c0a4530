"""Administration: tutor approvals, user management by invitation, and the audit log."""

from __future__ import annotations

import math

from aiohttp import web
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from panda import keys
from panda.errors import BadRequest, Forbidden, NotFound
from panda.store import audit
from panda.store.accounts import (
    REASON_MAX,
    clean_email,
    clean_name,
    create_token,
    email_taken,
    is_timezone,
    pending_tutors,
    role_counts,
    search_users,
    timezone_groups,
)
from panda.store.models import ROLES, User
from panda.store.users import create_user
from panda.web import account_mail, ws_sessions
from panda.web.auth import end_other_sessions, flash, require_role
from panda.web.forms import read_form
from panda.web.render import render

PAGE_SIZE = 25
INVITE_ROLES = ("student", "tutor")


def _page(request: web.Request) -> int:
    try:
        return max(1, min(int(request.query.get("page", "1")), 100_000))
    except ValueError:
        return 1


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PAGE_SIZE))


async def _target(request: web.Request, db: AsyncSession) -> User:
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise NotFound("There is no such user.") from None
    user = await db.get(User, user_id)
    if user is None:
        raise NotFound("There is no such user.")
    return user


# --- overview ----------------------------------------------------------------------------------


async def admin_home(request: web.Request) -> web.StreamResponse:
    """Counts, tutors waiting for review and the latest admin actions."""
    require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        counts = await role_counts(db)
        pending = await pending_tutors(db)
        entries, _ = await audit.list_entries(db, limit=8)
        _, unverified = await search_users(db, status="unverified", limit=1)
    return render(
        request,
        "admin/home.html",
        {
            "counts": counts,
            "pending": pending,
            "entries": entries,
            "unverified": unverified,
            "action_labels": audit.ACTIONS,
        },
    )


# --- tutor approvals ---------------------------------------------------------------------------


async def tutor_queue(request: web.Request) -> web.StreamResponse:
    """Tutors waiting for a decision."""
    require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        pending = await pending_tutors(db)
    return render(request, "admin/tutors.html", {"pending": pending, "errors": {}})


async def tutor_decide(request: web.Request) -> web.StreamResponse:
    """Approve or reject a tutor; the reason (required to reject) is mailed to them."""
    admin = require_role(request, "admin")
    decision = request.match_info["decision"]
    form = await read_form(request)
    reason = form.get("reason", "").strip()
    if len(reason) > REASON_MAX:
        raise BadRequest(f"Keep the reason under {REASON_MAX} characters.")
    async with request.app[keys.sessionmaker]() as db:
        tutor = await _target(request, db)
        if not tutor.is_tutor:
            raise BadRequest("Only tutors can be approved or rejected.")
        if decision == "reject" and not reason:
            pending = await pending_tutors(db)
            return render(
                request,
                "admin/tutors.html",
                {
                    "pending": pending,
                    "errors": {tutor.id: "Tell the tutor why, so they can improve their profile."},
                },
                status=422,
            )
        approved = decision == "approve"
        tutor.tutor_status = "approved" if approved else "rejected"
        tutor.tutor_status_reason = reason or None
        await audit.record(
            db, admin, "tutor.approve" if approved else "tutor.reject", tutor, reason=reason
        )
        await db.commit()
    await account_mail.send_tutor_decision(request.app, tutor, approved, reason)
    flash(
        request,
        f"{tutor.name} is {'approved' if approved else 'rejected'}; we e-mailed them.",
        "success",
    )
    back = f"/admin/users/{tutor.id}" if form.get("back") == "user" else "/admin/tutors"
    raise web.HTTPSeeOther(back)


# --- users -------------------------------------------------------------------------------------


async def user_list(request: web.Request) -> web.StreamResponse:
    """Search and filter accounts."""
    require_role(request, "admin")
    query = request.query.get("q", "").strip()[:200]
    role = request.query.get("role", "")
    role = role if role in ROLES else ""
    status = request.query.get("status", "")
    status = status if status in {"active", "inactive", "pending", "unverified"} else ""
    page = _page(request)
    async with request.app[keys.sessionmaker]() as db:
        users, total = await search_users(
            db,
            query=query,
            role=role,
            status=status,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    return render(
        request,
        "admin/users.html",
        {
            "users": users,
            "total": total,
            "page": page,
            "pages": _pages(total),
            "filters": {"q": query, "role": role, "status": status},
        },
    )


def _invite_context(form: dict[str, str], errors: dict[str, str]) -> dict[str, object]:
    return {
        "form": form,
        "errors": errors,
        "timezone_groups": timezone_groups(),
        "roles": INVITE_ROLES,
    }


async def invite_page(request: web.Request) -> web.StreamResponse:
    """The form to onboard a student or tutor."""
    require_role(request, "admin")
    role = request.query.get("role", "student")
    return render(
        request,
        "admin/invite.html",
        _invite_context({"role": role if role in INVITE_ROLES else "student"}, {}),
    )


async def invite_submit(request: web.Request) -> web.StreamResponse:
    """Create the account (no password) and mail a set-password link."""
    admin = require_role(request, "admin")
    form = await read_form(request)
    errors: dict[str, str] = {}
    name, problem = clean_name(form.get("name", ""))
    if problem:
        errors["name"] = problem
    email, problem = clean_email(form.get("email", ""))
    if problem:
        errors["email"] = problem
    role = form.get("role", "")
    if role not in INVITE_ROLES:
        errors["role"] = "Choose student or tutor."
    timezone = form.get("timezone", "").strip() or "UTC"
    if not is_timezone(timezone):
        errors["timezone"] = "Choose a time zone from the list."
    values = {"name": name, "email": email, "role": role, "timezone": timezone}
    async with request.app[keys.sessionmaker]() as db:
        if "email" not in errors and await email_taken(db, email):
            errors["email"] = "An account with this e-mail address exists already."
        if errors:
            return render(request, "admin/invite.html", _invite_context(values, errors), status=422)
        try:
            # The admin vouches for people they onboard: invited tutors start approved.
            user = await create_user(
                db,
                email=email,
                name=name,
                password=None,
                role=role,
                timezone=timezone,
                tutor_status="approved" if role == "tutor" else None,
            )
            token = await create_token(db, user, "invite")
            await audit.record(db, admin, "user.invite", user, role=role)
            await db.commit()
        except IntegrityError:
            await db.rollback()
            errors["email"] = "An account with this e-mail address exists already."
            return render(request, "admin/invite.html", _invite_context(values, errors), status=422)
    await account_mail.send_invitation(request.app, user, token, admin)
    flash(request, f"We sent {user.name} an invitation to {user.email}.", "success")
    raise web.HTTPSeeOther(f"/admin/users/{user.id}")


async def user_detail(request: web.Request) -> web.StreamResponse:
    """One account, its history in the audit log, and the actions an admin can take."""
    require_role(request, "admin")
    async with request.app[keys.sessionmaker]() as db:
        user = await _target(request, db)
        entries, _ = await audit.list_entries(db, target_id=str(user.id), limit=20)
    return render(
        request,
        "admin/user.html",
        {"target": user, "entries": entries, "roles": ROLES, "action_labels": audit.ACTIONS},
    )


async def user_action(request: web.Request) -> web.StreamResponse:
    """Deactivate, reactivate, change role or re-send the invitation."""
    admin = require_role(request, "admin")
    action = request.match_info["action"]
    form = await read_form(request)
    token: str | None = None
    async with request.app[keys.sessionmaker]() as db:
        user = await _target(request, db)
        if user.id == admin.id and action in {"deactivate", "role"}:
            raise Forbidden("You cannot deactivate yourself or change your own role.")
        if action == "deactivate":
            if not user.is_active:
                raise BadRequest("This account is already deactivated.")
            user.is_active = False
            await end_other_sessions(db, user.id)
            await audit.record(db, admin, "user.deactivate", user)
            message = f"{user.name} is deactivated and logged out everywhere."
        elif action == "reactivate":
            if user.is_active:
                raise BadRequest("This account is already active.")
            user.is_active = True
            await audit.record(db, admin, "user.reactivate", user)
            message = f"{user.name} can log in again."
        elif action == "role":
            role = form.get("role", "")
            if role not in ROLES:
                raise BadRequest("Choose student, tutor or admin.")
            if role == user.role:
                raise BadRequest(f"{user.name} already has that role.")
            old = user.role
            user.role = role
            # A tutor made by an admin is vouched for; other roles have no tutor status.
            user.tutor_status = "approved" if role == "tutor" else None
            await audit.record(db, admin, "user.role", user, old=old, new=role)
            message = f"{user.name} is now {'an' if role == 'admin' else 'a'} {role}."
        elif action == "resend-invite":
            if user.password_hash:
                raise BadRequest("This person has already chosen a password.")
            token = await create_token(db, user, "invite")
            await audit.record(db, admin, "user.resend_invite", user)
            message = f"We sent {user.name} a new invitation."
        else:
            raise NotFound("That action does not exist.")
        await db.commit()
    if action == "deactivate":
        await ws_sessions.end_sessions(request.app, user.id)
    if token is not None:
        await account_mail.send_invitation(request.app, user, token, admin)
    flash(request, message, "success")
    raise web.HTTPSeeOther(f"/admin/users/{user.id}")


# --- audit log ---------------------------------------------------------------------------------


async def audit_log(request: web.Request) -> web.StreamResponse:
    """Every admin action, newest first."""
    require_role(request, "admin")
    action = request.query.get("action", "")[:64]
    page = _page(request)
    async with request.app[keys.sessionmaker]() as db:
        actions = await audit.known_actions(db)
        action = action if action in actions else ""
        entries, total = await audit.list_entries(
            db, action=action, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    return render(
        request,
        "admin/audit.html",
        {
            "entries": entries,
            "total": total,
            "page": page,
            "pages": _pages(total),
            "action": action,
            "actions": actions,
            "action_labels": audit.ACTIONS,
        },
    )


def setup(app: web.Application) -> None:
    """Register the admin routes and the `audit_label` template helper."""
    app[keys.templates].globals["audit_label"] = audit.label
    app.router.add_get("/admin", admin_home, name="admin")
    app.router.add_get("/admin/tutors", tutor_queue, name="admin_tutors")
    app.router.add_post(r"/admin/tutors/{user_id}/{decision:approve|reject}", tutor_decide)
    app.router.add_get("/admin/users", user_list, name="admin_users")
    app.router.add_get("/admin/users/new", invite_page, name="admin_invite")
    app.router.add_post("/admin/users/new", invite_submit)
    app.router.add_get(r"/admin/users/{user_id:\d+}", user_detail, name="admin_user")
    app.router.add_post(
        r"/admin/users/{user_id:\d+}/{action:deactivate|reactivate|role|resend-invite}",
        user_action,
    )
    app.router.add_get("/admin/audit", audit_log, name="admin_audit")
