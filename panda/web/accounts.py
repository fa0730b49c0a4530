"""Log in and log out."""

from __future__ import annotations

from aiohttp import web

from panda import keys
from panda.passwords import verify_password_async
from panda.store.users import get_user_by_email
from panda.web.auth import flash, login_user, logout_user
from panda.web.forms import read_form, safe_next
from panda.web.render import render

LOGIN_FAILED = "That e-mail and password do not match an account."


async def login_page(request: web.Request) -> web.StreamResponse:
    """The login form."""
    if request.get(keys.user):
        raise web.HTTPSeeOther("/dashboard")
    return render(request, "login.html", {"next": safe_next(request.query.get("next")), "form": {}})


async def login_submit(request: web.Request) -> web.StreamResponse:
    """Check the credentials; on success start a fresh session."""
    form = await read_form(request)
    email = form.get("email", "").strip()
    password = form.get("password", "")
    next_url = safe_next(form.get("next"))
    async with request.app[keys.sessionmaker]() as db:
        user = await get_user_by_email(db, email) if email else None
        ok = await verify_password_async(user.password_hash if user else None, password)
        if not ok or user is None or not user.is_active:
            return render(
                request,
                "login.html",
                {"next": next_url, "form": {"email": email}, "error": LOGIN_FAILED},
                status=400,
            )
        await login_user(request, db, user)
        await db.commit()
    raise web.HTTPSeeOther(next_url)


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session on the server and in the browser."""
    async with request.app[keys.sessionmaker]() as db:
        await logout_user(request, db)
        await db.commit()
    flash(request, "You are logged out.")
    raise web.HTTPSeeOther("/")


def setup(app: web.Application) -> None:
    """Register the routes of this area."""
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout, name="logout")
