"""Sign up, e-mail verification, log in and out (throttled), password reset, invitations."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from panda import keys, ratelimit
from panda.bus import setup_bus
from panda.config import IPNetwork
from panda.errors import RateLimited
from panda.passwords import hash_password_async, password_problem, verify_password_async
from panda.ratelimit import get_limiter
from panda.store.accounts import (
    consume_token,
    create_token,
    email_taken,
    mark_verified,
    peek_token,
    set_password,
    timezone_groups,
    validate_signup,
)
from panda.store.models import User
from panda.store.users import create_user, get_user_by_email, normalise_email
from panda.web import account_mail, ws_sessions
from panda.web.auth import current_user, end_other_sessions, flash, login_user, logout_user
from panda.web.forms import read_form, safe_next
from panda.web.render import render

LOGIN_FAILED = "That e-mail and password do not match an account."
LOGIN_THROTTLED = "Too many failed attempts. Please wait a few minutes and try again."
LOGIN_INACTIVE = "This account is deactivated. Please contact the Panda Professor team."
EMAIL_EXISTS = "An account with this e-mail address exists already. Log in or reset your password."
FORGOT_SENT = (
    "If an account exists for that address, we have sent it a link to choose a new password. "
    "The link works for one hour."
)
TOKEN_INVALID = {
    "verify": "This confirmation link is invalid, was already used or has expired.",
    "reset": "This password reset link is invalid, was already used or has expired.",
    "invite": "This invitation link is invalid, was already used or has expired.",
}
# Token pages must not leak their URL (which holds the token) to other sites.
NO_REFERRER = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

_dummy_hash: str | None = None


async def _dummy_password_hash() -> str:
    """A hash to verify against when the e-mail is unknown, so both cases take as long."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = await hash_password_async("not-a-real-password-for-timing")
    return _dummy_hash


def client_ip(request: web.Request) -> str:
    """The client's address for throttling.

    X-Forwarded-For is read right to left while the hop that added an entry is a trusted proxy
    (PANDA_TRUSTED_PROXIES, by default a proxy on this machine); the first entry added by an
    untrusted hop names the client. Entries further left are client-supplied and ignored.
    """
    peer = request.remote or "unknown"
    trusted = request.app[keys.settings].trusted_proxies
    hops = request.headers.get("X-Forwarded-For", "").split(",")
    current = peer
    while _is_trusted(current, trusted) and hops:
        entry = hops.pop().strip()
        if not entry or len(entry) > 64:
            break
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            break
        current = entry
    return current


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _redirect(location: str, headers: dict[str, str] | None = None) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location, headers=headers)


# --- sign-up -----------------------------------------------------------------------------------


def _signup_context(form: dict[str, str], errors: dict[str, str]) -> dict[str, object]:
    values = {k: v for k, v in form.items() if k in {"name", "email", "role", "timezone"}}
    values.setdefault("role", "student")
    return {"form": values, "errors": errors, "timezone_groups": timezone_groups()}


async def signup_page(request: web.Request) -> web.StreamResponse:
    """The sign-up form."""
    if current_user(request):
        raise _redirect("/dashboard")
    form = {"role": "tutor" if request.query.get("role") == "tutor" else "student"}
    return render(request, "signup.html", _signup_context(form, {}))


async def signup_submit(request: web.Request) -> web.StreamResponse:
    """Create the account, log it in and mail the confirmation link."""
    form = await read_form(request)
    limiter = get_limiter(request.app)
    # Only accounts actually created count, so a class signing up together is not blocked by typos.
    await ratelimit.check(
        limiter,
        ratelimit.SIGNUP_PER_IP,
        client_ip(request),
        "Many accounts were created from your network in the last hour. Please try again later.",
    )
    data, errors = validate_signup(form)
    async with request.app[keys.sessionmaker]() as db:
        if "email" not in errors and await email_taken(db, data.email):
            errors["email"] = EMAIL_EXISTS
        if errors:
            return render(request, "signup.html", _signup_context(form, errors), status=422)
        try:
            user = await create_user(
                db,
                email=data.email,
                name=data.name,
                password=data.password,
                role=data.role,
                timezone=data.timezone,
            )
            token = await create_token(db, user, "verify")
            await login_user(request, db, user)
            await db.commit()
        except IntegrityError:
            # Two sign-ups with the same address raced; the database kept one.
            await db.rollback()
            errors["email"] = EMAIL_EXISTS
            return render(request, "signup.html", _signup_context(form, errors), status=422)
    await ratelimit.hit(limiter, ratelimit.SIGNUP_PER_IP, client_ip(request))
    await account_mail.send_verification(request.app, user, token)
    flash(
        request,
        f"Welcome, {user.name}! We sent a confirmation link to {user.email}.",
        "success",
    )
    raise _redirect("/dashboard")


# --- e-mail verification -----------------------------------------------------------------------


async def verify(request: web.Request) -> web.StreamResponse:
    """Open the mailed link: mark the address verified and go to the login page."""
    async with request.app[keys.sessionmaker]() as db:
        user = await consume_token(db, request.match_info["token"], "verify")
        if user is None:
            return render(
                request,
                "token_invalid.html",
                {"message": TOKEN_INVALID["verify"], "purpose": "verify"},
                status=400,
                headers=NO_REFERRER,
            )
        newly = await mark_verified(db, user)
        await db.commit()
    if newly:
        await account_mail.send_verified(request.app, user)
    flash(request, "Your e-mail address is verified. Thank you!", "success")
    raise _redirect("/login", NO_REFERRER)


async def resend_verification(request: web.Request) -> web.StreamResponse:
    """Mail a fresh confirmation link (a few per hour)."""
    user = current_user(request)
    form = await read_form(request)
    back = safe_next(form.get("next"))
    if user is None:
        raise _redirect("/login")
    if user.is_verified:
        flash(request, "Your e-mail address is already verified.", "info")
        raise _redirect(back)
    await ratelimit.consume(
        get_limiter(request.app),
        ratelimit.VERIFY_RESEND,
        str(user.id),
        "We have sent several links already. Please check your inbox (and spam folder) "
        "or try again later.",
    )
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        token = await create_token(db, fresh, "verify")
        await db.commit()
    await account_mail.send_verification(request.app, user, token)
    flash(request, f"We sent a new confirmation link to {user.email}.", "success")
    raise _redirect(back)


# --- log in / out ------------------------------------------------------------------------------


async def check_login_throttle(request: web.Request, email: str) -> None:
    """RateLimited when this address or this client has failed too often."""
    limiter = get_limiter(request.app)
    await ratelimit.check(limiter, ratelimit.LOGIN_PER_IP, client_ip(request), LOGIN_THROTTLED)
    if email:
        await ratelimit.check(limiter, ratelimit.LOGIN_PER_ACCOUNT, email, LOGIN_THROTTLED)


async def record_login_failure(request: web.Request, email: str) -> None:
    """Count a failed attempt against the address (known or not) and the client."""
    limiter = get_limiter(request.app)
    await ratelimit.hit(limiter, ratelimit.LOGIN_PER_IP, client_ip(request))
    if email:
        await ratelimit.hit(limiter, ratelimit.LOGIN_PER_ACCOUNT, email)


async def authenticate(request: web.Request, email: str, password: str) -> User | None:
    """The active user with these credentials, counting failures; RateLimited when throttled.

    Unknown addresses cost the same hash check as known ones and answer the same way.
    """
    await check_login_throttle(request, email)
    async with request.app[keys.sessionmaker]() as db:
        user = await get_user_by_email(db, email) if email else None
    stored = user.password_hash if user and user.password_hash else await _dummy_password_hash()
    ok = await verify_password_async(stored, password) and user is not None
    if not ok or user is None:
        await record_login_failure(request, email)
        return None
    await ratelimit.clear(get_limiter(request.app), ratelimit.LOGIN_PER_ACCOUNT, email)
    return user


async def login_page(request: web.Request) -> web.StreamResponse:
    """The login form."""
    if current_user(request):
        raise _redirect("/dashboard")
    return render(request, "login.html", {"next": safe_next(request.query.get("next")), "form": {}})


async def login_submit(request: web.Request) -> web.StreamResponse:
    """Check the credentials (throttled); on success start a fresh session."""
    form = await read_form(request)
    email = normalise_email(form.get("email", ""))[:254]
    password = form.get("password", "")[:1024]
    next_url = safe_next(form.get("next"))
    ctx: dict[str, object] = {"next": next_url, "form": {"email": email}}
    try:
        user = await authenticate(request, email, password)
    except RateLimited as exc:
        minutes = max(1, (exc.retry_after + 59) // 60)
        wait = f"{minutes} minute{'s' if minutes != 1 else ''}"
        return render(
            request,
            "login.html",
            {**ctx, "error": f"Too many failed attempts. Please try again in {wait}."},
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if user is None:
        return render(request, "login.html", {**ctx, "error": LOGIN_FAILED}, status=400)
    if not user.is_active:
        return render(request, "login.html", {**ctx, "error": LOGIN_INACTIVE}, status=403)
    async with request.app[keys.sessionmaker]() as db:
        await login_user(request, db, user)
        await db.commit()
    raise _redirect(next_url)


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session on the server and in the browser."""
    user, sid = current_user(request), request.get(keys.session_id)
    async with request.app[keys.sessionmaker]() as db:
        await logout_user(request, db)
        await db.commit()
    if user is not None and sid:
        await ws_sessions.end_sessions(request.app, user.id, sid=sid)
    flash(request, "You are logged out.")
    raise _redirect("/")


# --- password reset ----------------------------------------------------------------------------


async def forgot_page(request: web.Request) -> web.StreamResponse:
    """Ask for the address to send a reset link to."""
    return render(request, "password_forgot.html", {"form": {}, "errors": {}})


async def forgot_submit(request: web.Request) -> web.StreamResponse:
    """Always the same answer; a link is mailed only when the account exists."""
    form = await read_form(request)
    email = normalise_email(form.get("email", ""))[:254]
    if "@" not in email:
        return render(
            request,
            "password_forgot.html",
            {"form": {"email": email}, "errors": {"email": "Please enter your e-mail address."}},
            status=422,
        )
    limiter = get_limiter(request.app)
    await ratelimit.consume(
        limiter,
        ratelimit.RESET_PER_IP,
        client_ip(request),
        "Too many reset requests from your network. Please try again later.",
    )
    # Past the per-address limit we quietly stop mailing; the answer does not change.
    if await ratelimit.hit(limiter, ratelimit.RESET_PER_ACCOUNT, email):
        async with request.app[keys.sessionmaker]() as db:
            user = await get_user_by_email(db, email)
            token = None
            if user is not None and user.is_active:
                token = await create_token(db, user, "reset")
                await db.commit()
        if user is not None and token is not None:
            await account_mail.send_reset(request.app, user, token)
    return render(request, "password_forgot.html", {"sent": FORGOT_SENT, "form": {}, "errors": {}})


def _password_errors(form: dict[str, str], user: User) -> dict[str, str]:
    password = form.get("password", "")
    errors: dict[str, str] = {}
    problem = password_problem(password, email=user.email, name=user.name)
    if problem:
        errors["password"] = problem
    elif form.get("password_confirm", "") != password:
        errors["password_confirm"] = "The two passwords do not match."
    return errors


async def _token_form(request: web.Request, purpose: str) -> web.StreamResponse:
    async with request.app[keys.sessionmaker]() as db:
        user = await peek_token(db, request.match_info["token"], purpose)
    if user is None:
        return render(
            request,
            "token_invalid.html",
            {"message": TOKEN_INVALID[purpose], "purpose": purpose},
            status=400,
            headers=NO_REFERRER,
        )
    return render(
        request,
        "set_password.html",
        {"purpose": purpose, "target": user, "errors": {}, "action": request.path},
        headers=NO_REFERRER,
    )


async def _token_submit(
    request: web.Request, purpose: str
) -> tuple[User | None, web.Response | None]:
    """Validate the new password and use the token up; (user, None) or (None, error page)."""
    form = await read_form(request)
    raw = request.match_info["token"]
    async with request.app[keys.sessionmaker]() as db:
        user = await peek_token(db, raw, purpose)
        errors = _password_errors(form, user) if user is not None else {}
        if user is not None and errors:
            return None, render(
                request,
                "set_password.html",
                {"purpose": purpose, "target": user, "errors": errors, "action": request.path},
                status=422,
                headers=NO_REFERRER,
            )
        user = await consume_token(db, raw, purpose)
        if user is None:
            return None, render(
                request,
                "token_invalid.html",
                {"message": TOKEN_INVALID[purpose], "purpose": purpose},
                status=400,
                headers=NO_REFERRER,
            )
        await set_password(db, user, form.get("password", ""))
        # Whoever could open the mailed link controls the address.
        await mark_verified(db, user)
        me = current_user(request)
        keep = request.get(keys.session_id) if me is not None and me.id == user.id else None
        await end_other_sessions(db, user.id, keep=keep)
        if purpose == "invite" and keep is None:
            await login_user(request, db, user)
        await db.commit()
    await ws_sessions.end_sessions(request.app, user.id, keep=keep)
    await ratelimit.clear(get_limiter(request.app), ratelimit.LOGIN_PER_ACCOUNT, user.email)
    return user, None


async def reset_page(request: web.Request) -> web.StreamResponse:
    """The new-password form behind a reset link."""
    return await _token_form(request, "reset")


async def reset_submit(request: web.Request) -> web.StreamResponse:
    """Set the new password, end every other session, mail a notice."""
    user, error = await _token_submit(request, "reset")
    if error is not None or user is None:
        assert error is not None
        return error
    await account_mail.send_password_changed(request.app, user)
    flash(request, "Your password is changed. Log in with your new password.", "success")
    raise _redirect("/login", NO_REFERRER)


async def invite_page(request: web.Request) -> web.StreamResponse:
    """The choose-a-password form behind an invitation link."""
    return await _token_form(request, "invite")


async def invite_submit(request: web.Request) -> web.StreamResponse:
    """Set the first password and log the new user in."""
    user, error = await _token_submit(request, "invite")
    if error is not None or user is None:
        assert error is not None
        return error
    flash(request, f"Welcome to Panda Professor, {user.name}! Your account is ready.", "success")
    raise _redirect("/dashboard", NO_REFERRER)


def setup(app: web.Application) -> None:
    """Register the routes of this area and the shared rate limiter."""
    # With Redis configured the counters live in the bus, which must then be running.
    if app[keys.settings].redis_url:
        setup_bus(app)
    app.cleanup_ctx.append(ratelimit.limiter_ctx)
    app.router.add_get("/signup", signup_page, name="signup")
    app.router.add_post("/signup", signup_submit)
    app.router.add_get("/verify/{token}", verify, name="verify")
    app.router.add_post("/verify/resend", resend_verification, name="verify_resend")
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout, name="logout")
    app.router.add_get("/password/forgot", forgot_page, name="password_forgot")
    app.router.add_post("/password/forgot", forgot_submit)
    app.router.add_get("/password/reset/{token}", reset_page, name="password_reset")
    app.router.add_post("/password/reset/{token}", reset_submit)
    app.router.add_get("/invite/{token}", invite_page, name="invite")
    app.router.add_post("/invite/{token}", invite_submit)
