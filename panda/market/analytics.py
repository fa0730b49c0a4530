"""Marketplace analytics and small server-side SVG charts (no JavaScript, CSP-friendly)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from panda.market.availability import zone_of
from panda.store.models import Booking, Review
from panda.store.types import utcnow


@dataclass
class Analytics:
    """The figures the admin analytics page shows."""

    weeks: list[tuple[str, int]]
    completion_rate: float
    no_show_rate: float
    cancel_rate: float
    finished: int
    ratings: list[tuple[str, int]]
    hours: list[tuple[str, int]]
    by_status: dict[str, int]


async def compute(
    db: AsyncSession, *, weeks: int = 12, tz: str = "UTC", now: datetime | None = None
) -> Analytics:
    """Sessions per week, completion/no-show rates, rating distribution, busiest hours."""
    now = now or utcnow()
    zone = zone_of(tz)
    since = now - timedelta(weeks=weeks)
    rows = (
        await db.execute(select(Booking.start_at, Booking.status).where(Booking.start_at >= since))
    ).all()
    week_counts: Counter[str] = Counter()
    hour_counts: Counter[int] = Counter()
    for start, status in rows:
        if status in ("scheduled", "in_progress", "completed", "no_show"):
            local = start.astimezone(zone)
            monday = (local - timedelta(days=local.weekday())).date()
            week_counts[monday.isoformat()] += 1
            hour_counts[local.hour] += 1
    labels = []
    first = now.astimezone(zone) - timedelta(weeks=weeks - 1)
    first_monday = (first - timedelta(days=first.weekday())).date()
    for i in range(weeks):
        labels.append((first_monday + timedelta(weeks=i)).isoformat())
    by_status = dict(
        (
            await db.execute(
                select(Booking.status, func.count(Booking.id)).group_by(Booking.status)
            )
        ).all()
    )
    finished = sum(by_status.get(s, 0) for s in ("completed", "no_show", "cancelled"))
    rating_rows = dict(
        (
            await db.execute(
                select(Review.rating, func.count(Review.id))
                .where(Review.hidden.is_(False))
                .group_by(Review.rating)
            )
        ).all()
    )
    return Analytics(
        weeks=[(d[5:], week_counts.get(d, 0)) for d in labels],
        completion_rate=by_status.get("completed", 0) / finished if finished else 0.0,
        no_show_rate=by_status.get("no_show", 0) / finished if finished else 0.0,
        cancel_rate=by_status.get("cancelled", 0) / finished if finished else 0.0,
        finished=finished,
        ratings=[(f"{r}★", int(rating_rows.get(r, 0))) for r in range(1, 6)],
        hours=[(f"{h:02d}", hour_counts.get(h, 0)) for h in range(24)],
        by_status={k: int(v) for k, v in by_status.items()},
    )


def bar_chart(
    data: list[tuple[str, int]],
    *,
    title: str,
    width: int = 560,
    height: int = 220,
    alt: bool = False,
    every: int = 1,
) -> str:
    """An accessible SVG bar chart (title, description, value labels)."""
    pad_left, pad_bottom, pad_top = 28, 26, 16
    inner_w, inner_h = width - pad_left - 8, height - pad_bottom - pad_top
    top = max([v for _, v in data] + [1])
    step = inner_w / max(len(data), 1)
    bar_w = max(2.0, step * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="t-{id(data)}"><title id="t-{id(data)}">{escape(title)}: '
        + escape(", ".join(f"{k} {v}" for k, v in data))
        + "</title>",
        f'<line class="chart-axis" x1="{pad_left}" y1="{pad_top + inner_h}" '
        f'x2="{width - 8}" y2="{pad_top + inner_h}"/>',
    ]
    for i, (label, value) in enumerate(data):
        h = inner_h * value / top
        x = pad_left + i * step + (step - bar_w) / 2
        y = pad_top + inner_h - h
        parts.append(
            f'<rect class="chart-bar{" alt" if alt else ""}" x="{x:.1f}" y="{y:.1f}" '
            f'width="{bar_w:.1f}" height="{h:.1f}" rx="2"/>'
        )
        if value and len(data) <= 14:
            parts.append(
                f'<text class="chart-value" x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" '
                f'text-anchor="middle">{value}</text>'
            )
        if i % every == 0:
            parts.append(
                f'<text class="chart-label" x="{x + bar_w / 2:.1f}" '
                f'y="{height - 8}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<text class="chart-label" x="{pad_left - 4}" y="{pad_top + 4}" '
        f'text-anchor="end">{top}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def donut(rate: float, *, label: str) -> str:
    """A small SVG ring showing one rate."""
    r, c = 40, 2 * 3.14159 * 40
    filled = max(0.0, min(1.0, rate)) * c
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100" role="img" '
        f'aria-label="{escape(label)}: {rate:.0%}" class="donut">'
        f'<circle cx="50" cy="50" r="{r}" fill="none" stroke="#e3e8ee" stroke-width="12"/>'
        f'<circle cx="50" cy="50" r="{r}" fill="none" stroke="#00895a" stroke-width="12" '
        f'stroke-dasharray="{filled:.1f} {c:.1f}" transform="rotate(-90 50 50)"/>'
        f'<text x="50" y="55" text-anchor="middle" class="chart-value">{rate:.0%}</text></svg>'
    )
