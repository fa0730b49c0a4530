"""Tutor search latency over a realistic database: p50/p95 of GET /api/tutors with and without
the free-time-window filter, interleaved in one run. Prints one JSON object.

    python bench/search.py                # builds a temporary database with 10,000 tutors
    python bench/search.py --data-dir var # uses an existing data dir (e.g. after panda demo)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import TestClient, TestServer

from panda.app import create_app
from panda.config import Settings
from panda.demo_data import SUBJECTS, create_many_tutors
from panda.market.availability import iso_utc
from panda.store.db import create_engine, create_sessionmaker
from panda.store.migrate import upgrade_async
from panda.store.types import utcnow

SECRET = "bench-secret-key-that-is-long-enough-0123456789"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _prepare(data_dir: Path, tutors: int) -> Settings:
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'panda.sqlite3'}",
        secret_key=SECRET,
        extra={"scheduler": False},
    )
    await upgrade_async(settings.database_url)
    if tutors:
        engine = create_engine(settings.database_url)
        try:
            async with create_sessionmaker(engine)() as db:
                await create_many_tutors(db, tutors)
        finally:
            await engine.dispose()
    return settings


def _queries(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(plain, windowed) query strings; the windowed one adds a 3-hour window."""
    out = []
    now = utcnow()
    for _ in range(n):
        params = []
        if rng.random() < 0.7:
            params.append(f"subject={rng.choice(SUBJECTS).lower().replace(' ', '-')}")
        if rng.random() < 0.4:
            params.append(f"max_price={rng.choice((30, 50, 80))}")
        if rng.random() < 0.3:
            params.append(f"language={rng.choice(('english', 'spanish', 'german'))}")
        if rng.random() < 0.3:
            params.append(f"min_rating={rng.choice((4, 4.5))}")
        params.append(f"sort={rng.choice(('rating', 'price', 'newest'))}")
        plain = "&".join(params)
        start = (now + timedelta(days=rng.randint(1, 20), hours=rng.randint(0, 23))).replace(
            minute=0, second=0, microsecond=0
        )
        window = f"free_from={iso_utc(start)}&free_to={iso_utc(start + timedelta(hours=3))}"
        out.append((plain, f"{plain}&{window}"))
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir).absolute()  # noqa: ASYNC240
        settings = await _prepare(data_dir, 0)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="panda-bench-")
        data_dir = Path(tmp.name)
        t0 = time.perf_counter()
        settings = await _prepare(data_dir, args.tutors)
        print(f"built {args.tutors} tutors in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        rng = random.Random(args.seed)
        queries = _queries(rng, args.requests)
        for plain, windowed in queries[:10]:  # warm-up: caches, connection
            await client.get(f"/api/tutors?{plain}")
            await client.get(f"/api/tutors?{windowed}")
        times: dict[str, list[float]] = {"plain": [], "window": []}
        totals: dict[str, list[int]] = {"plain": [], "window": []}
        for i, (plain, windowed) in enumerate(queries):
            order = [("plain", plain), ("window", windowed)]
            if i % 2:
                order.reverse()  # alternate so neither side always runs second
            for name, query in order:
                t0 = time.perf_counter()
                resp = await client.get(f"/api/tutors?{query}")
                body = await resp.json()
                times[name].append((time.perf_counter() - t0) * 1000)
                assert resp.status == 200, body
                totals[name].append(int(body["total"]))
    finally:
        await client.close()
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, object] = {"benchmark": "tutor_search", "requests_each": args.requests}
    for name in ("plain", "window"):
        result[name] = {
            "p50_ms": round(statistics.median(times[name]), 2),
            "p95_ms": round(_pct(times[name], 0.95), 2),
            "mean_matches": round(statistics.mean(totals[name]), 1),
        }
    result["window_over_plain_p50"] = round(
        result["window"]["p50_ms"] / result["plain"]["p50_ms"],
        2,  # type: ignore[index]
    )
    result["aim_p50_ms"] = 50
    return result


def main() -> None:
    """Parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tutors", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--data-dir", help="use an existing data directory instead")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
