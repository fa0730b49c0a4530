"""Two `panda serve` processes sharing a database and Redis: chat works across them."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.multiproc.helpers import LiveSocket, Person, create_users

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """One database for both processes: a shared SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        import shutil

        path = tmp_path / "shared.sqlite3"
        shutil.copy(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite+aiosqlite:///{path}"
    return str(request.getfixturevalue("fresh_postgres_url"))


def start_pair(
    live_server_factory: Callable[..., LiveServer], database_url: str, redis_url: str
) -> tuple[LiveServer, LiveServer]:
    """Processes A and B on their own ports, same database, same Redis."""
    env = {"PANDA_DATABASE_URL": database_url, "PANDA_REDIS_URL": redis_url}
    return live_server_factory(**env), live_server_factory(**env)


@pytest.fixture
async def people() -> AsyncIterator[list[Person]]:
    """Persons created by the test, closed afterwards."""
    made: list[Person] = []
    yield made
    for person in made:
        await person.close()


async def _student_and_tutor(
    database_url: str, a: LiveServer, people: list[Person]
) -> tuple[Person, Person, int]:
    student_user, tutor_user = await create_users(
        database_url, [("student", "sam@example.test"), ("tutor", "tom@example.test")]
    )
    student, tutor = Person(student_user), Person(tutor_user)
    people += [student, tutor]
    await student.login(a.url)
    await tutor.login(a.url)
    status, conv = await student.post(f"{a.url}/api/conversations", {"user_id": tutor_user.id})
    assert status == 201
    return student, tutor, int(conv["id"])


async def test_message_via_a_reaches_user_on_b_within_a_second(
    live_server_factory: Callable[..., LiveServer],
    shared_database_url: str,
    fresh_redis_url: str,
    people: list[Person],
) -> None:
    a, b = start_pair(live_server_factory, shared_database_url, fresh_redis_url)
    student, tutor, conv = await _student_and_tutor(shared_database_url, a, people)
    # The login made on A is valid on B (signed cookie + session row in the shared database).
    on_a = await student.live(a.url)
    on_b = await tutor.live(b.url)
    assert on_b.hello["node"] != on_a.hello["node"]
    presence = await on_a.next("presence")
    assert presence == {"type": "presence", "user_id": tutor.user.id, "online": True}
    latencies = []
    for n in range(5):
        started = time.monotonic()
        status, _ = await student.post(
            f"{a.url}/api/conversations/{conv}/messages", {"text": f"hello {n}"}
        )
        assert status == 201
        event = await on_b.next("message", wait_s=1.0)
        latencies.append(time.monotonic() - started)
        assert event["message"]["text"] == f"hello {n}"
        assert event["unread"] == n + 1
    assert max(latencies) < 1.0, latencies
    print(f"A->B delivery (POST on A to event on B): {[round(x * 1000) for x in latencies]} ms")
    # Presence and unread counts agree on both processes.
    for server in (a, b):
        mine = await student.get(f"{server.url}/api/conversations")
        theirs = await tutor.get(f"{server.url}/api/conversations")
        assert mine["conversations"][0]["other"]["online"] is True
        assert theirs["conversations"][0]["other"]["online"] is True
        assert theirs["unread_total"] == 5 and mine["unread_total"] == 0
    await on_b.close()
    assert (await on_a.next("presence")) == {
        "type": "presence",
        "user_id": tutor.user.id,
        "online": False,
    }
    for server in (a, b):
        mine = await student.get(f"{server.url}/api/conversations")
        assert mine["conversations"][0]["other"]["online"] is False
    await on_a.close()


async def _collect(sock: LiveSocket, want: dict[int, int], got: dict[int, list[int]]) -> None:
    """Receive chat messages until every conversation reached its wanted seq."""
    while any(len(got[c]) < n for c, n in want.items()):
        event = await sock.next("message", wait_s=60)
        got[event["conversation_id"]].append(event["message"]["seq"])


@pytest.mark.postgres
async def test_websocket_killed_mid_conversation_resumes_exactly_once(
    live_server_factory: Callable[..., LiveServer],
    fresh_postgres_url: str,
    fresh_redis_url: str,
    people: list[Person],
) -> None:
    a, b = start_pair(live_server_factory, fresh_postgres_url, fresh_redis_url)
    student, tutor, conv = await _student_and_tutor(fresh_postgres_url, a, people)
    total = 60
    sock = await tutor.live(b.url)
    await sock.watch(conv, 0)
    await sock.next("watching")

    async def send_all() -> None:
        for n in range(total):
            status, _ = await student.post(
                f"{a.url if n % 2 else b.url}/api/conversations/{conv}/messages",
                {"text": f"m{n}"},
            )
            assert status == 201

    sender = asyncio.create_task(send_all())
    seen: list[int] = []
    while len(seen) < 20:
        seen.append((await sock.next("message"))["message"]["seq"])
    # Kill the connection abruptly (no close handshake), as a network drop would.
    transport = sock.ws._response.connection.transport  # type: ignore[union-attr]
    transport.abort()
    await asyncio.sleep(0.3)  # messages keep being sent meanwhile
    # The page reconnects, here to the other process, resuming from the last seq it showed.
    sock = await tutor.live(a.url, watch={conv: seen[-1]})
    while len(seen) < total:
        seen.append((await sock.next("message", wait_s=30))["message"]["seq"])
    await sender
    assert seen == list(range(1, total + 1))
    await sock.ws.send_json({"type": "ping"})
    assert (await sock.next("message", "pong"))["type"] == "pong"  # no duplicate follows
    await sock.close()


@pytest.mark.postgres
@pytest.mark.timeout(900)
async def test_thousand_messages_from_ten_users_arrive_once_in_order(
    live_server_factory: Callable[..., LiveServer],
    fresh_postgres_url: str,
    fresh_redis_url: str,
    people: list[Person],
) -> None:
    a, b = start_pair(live_server_factory, fresh_postgres_url, fresh_redis_url)
    servers = [a.url, b.url]
    specs = [("tutor", "tutor@example.test")] + [
        ("student", f"student{n}@example.test") for n in range(9)
    ]
    users = await create_users(fresh_postgres_url, specs)
    persons = [Person(u) for u in users]
    people += persons
    tutor, students = persons[0], persons[1:]
    await asyncio.gather(*(p.login(servers[i % 2]) for i, p in enumerate(persons)))
    convs: dict[int, int] = {}
    for s in students:
        status, conv = await s.post(f"{a.url}/api/conversations", {"user_id": tutor.user.id})
        assert status == 201
        convs[s.user.id] = conv["id"]
    # Everyone listens, alternating processes, with their conversations open (watched).
    socks = {p.user.id: await p.live(servers[i % 2]) for i, p in enumerate(persons)}
    for conv_id in convs.values():
        await socks[tutor.user.id].watch(conv_id, 0)
        await socks[tutor.user.id].next("watching")
    for s in students:
        await socks[s.user.id].watch(convs[s.user.id], 0)
        await socks[s.user.id].next("watching")
    per_user = 100
    plan: dict[int, list[int]] = {s.user.id: [convs[s.user.id]] * per_user for s in students}
    conv_ids = list(convs.values())
    plan[tutor.user.id] = [conv_ids[n % len(conv_ids)] for n in range(per_user)]
    stored: dict[int, dict[int, int]] = defaultdict(dict)  # conv -> seq -> message id

    async def send_all(person: Person, index: int) -> None:
        rng = random.Random(index)
        for n, conv_id in enumerate(plan[person.user.id]):
            server = servers[rng.randrange(2)]
            status, body = await person.post(
                f"{server}/api/conversations/{conv_id}/messages",
                {"text": f"{person.user.id}:{n}", "client_id": f"u{person.user.id}n{n}"},
            )
            assert status == 201, body
            stored[conv_id][body["message"]["seq"]] = body["message"]["id"]

    want_tutor = {c: sum(1 for s in students if convs[s.user.id] == c) * per_user for c in conv_ids}
    for n in range(per_user):
        want_tutor[conv_ids[n % len(conv_ids)]] += 1
    received: dict[int, dict[int, list[int]]] = {p.user.id: defaultdict(list) for p in persons}
    collectors = [
        asyncio.create_task(_collect(socks[tutor.user.id], want_tutor, received[tutor.user.id]))
    ] + [
        asyncio.create_task(
            _collect(
                socks[s.user.id],
                {convs[s.user.id]: want_tutor[convs[s.user.id]]},
                received[s.user.id],
            )
        )
        for s in students
    ]
    started = time.monotonic()
    await asyncio.gather(*(send_all(p, i) for i, p in enumerate(persons)))
    send_seconds = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*collectors), 120)
    assert sum(len(v) for v in stored.values()) == 1000
    for conv_id, seqs in stored.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))  # stored without gaps
        # Each member got every message of the conversation exactly once, in stored order.
        assert received[tutor.user.id][conv_id] == list(range(1, len(seqs) + 1))
    for s in students:
        conv_id = convs[s.user.id]
        assert received[s.user.id][conv_id] == list(range(1, len(stored[conv_id]) + 1))
        history = await s.get(f"{a.url}/api/conversations/{conv_id}/messages?limit=200")
        assert [m["id"] for m in history["messages"]] == [
            stored[conv_id][seq] for seq in sorted(stored[conv_id])
        ]
    print(f"1000 messages from 10 users stored in {send_seconds:.1f}s")
    for sock in socks.values():
        await sock.close()


@pytest.mark.postgres
async def test_redis_killed_and_restarted_chat_keeps_working(
    live_server_factory: Callable[..., LiveServer],
    fresh_postgres_url: str,
    redis_server_factory: Callable[[], Any],
    people: list[Person],
) -> None:
    redis = redis_server_factory()
    a, b = start_pair(live_server_factory, fresh_postgres_url, redis.url)
    student, tutor, conv = await _student_and_tutor(fresh_postgres_url, a, people)
    sock = await tutor.live(b.url)
    await sock.watch(conv, 0)
    await sock.next("watching")
    url = f"{a.url}/api/conversations/{conv}/messages"
    assert (await student.post(url, {"text": "before"}))[0] == 201
    assert (await sock.next("message"))["message"]["text"] == "before"
    redis.kill()
    # Redis is gone: sending still works (stored in the database), history is intact.
    assert (await student.post(url, {"text": "during"}))[0] == 201
    history = await student.get(url)
    assert [m["text"] for m in history["messages"]] == ["before", "during"]
    redis.start()  # same port, empty
    # B's bus reconnects and its connections re-read the database: "during" arrives.
    assert (await sock.next("message", wait_s=20))["message"]["text"] == "during"
    assert (await student.post(url, {"text": "after"}))[0] == 201
    assert (await sock.next("message", wait_s=5))["message"]["text"] == "after"
    for server in (a, b):
        history = await tutor.get(f"{server.url}/api/conversations/{conv}/messages")
        assert [m["text"] for m in history["messages"]] == ["before", "during", "after"]
        assert [m["seq"] for m in history["messages"]] == [1, 2, 3]
    await sock.close()


async def test_bad_input_across_processes(
    live_server_factory: Callable[..., LiveServer],
    shared_database_url: str,
    fresh_redis_url: str,
    people: list[Person],
) -> None:
    a, b = start_pair(live_server_factory, shared_database_url, fresh_redis_url)
    student, tutor, conv = await _student_and_tutor(shared_database_url, a, people)
    (outsider_user,) = await create_users(shared_database_url, [("student", "eve@example.test")])
    outsider = Person(outsider_user)
    people.append(outsider)
    await outsider.login(b.url)
    path = f"/api/conversations/{conv}/messages"
    assert (await student.post(b.url + path, {"text": "x" * 4001}))[0] == 413
    status, body = await student.post(b.url + path, {"text": "<script>alert(1)</script>"})
    assert status == 201 and body["message"]["text"] == "<script>alert(1)</script>"
    async with tutor.http.get(f"{a.url}/messages/{conv}") as resp:
        html = await resp.text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert (await outsider.post(a.url + path, {"text": "hi"}))[0] == 403
    assert (await outsider.post(b.url + path, {"text": "hi"}))[0] == 403
    # The flood limit is shared by the processes (counted in Redis): 120 a minute in all.
    statuses = []
    for n in range(125):
        statuses.append((await student.post((a.url, b.url)[n % 2] + path, {"text": f"{n}"}))[0])
    assert statuses.count(201) == 119  # one was spent above
    assert statuses[-1] == 429
