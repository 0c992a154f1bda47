"""The Lua scripts' contracts and atomicity, run on the real Redis with unique keys."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dlq_router.backends.redis.connection import script
from tests.conftest import REDIS_URL

SEQ = 4096


class Keys:
    def __init__(self, uid: str) -> None:
        tag = "{" + uid + "}"
        self.work = uid
        self.work3, self.work6, self.work9 = (f"{uid}\x06\x16{s}" for s in (3, 6, 9))
        self.dlq, self.inflight, self.retry = f"{tag}:dlq", f"{tag}:inflight", f"{tag}:retry"
        self.claims = f"{tag}:claims"
        self.seq, self.parked, self.index = f"{tag}:seq", f"{tag}:parked", f"{tag}:parked:index"

    def all(self) -> list[str]:
        return [v for v in vars(self).values() if isinstance(v, str)]


@pytest.fixture
def k(uid: str, redis_client: redis.Redis) -> Iterator[Keys]:
    keys = Keys(uid)
    yield keys
    redis_client.delete(*keys.all())


@pytest.fixture
def run(redis_client: redis.Redis) -> Any:
    def call(name: str, keys: list[str], args: list[Any]) -> Any:
        return script(redis_client, name)(keys=keys, args=args)

    return call


def claim(run: Any, k: Keys, n: int, lease: int = 10**13, batch: str = "b") -> list[str]:
    """Claim up to n dead letters; the claim ids, oldest first (the letters: ``claimed``)."""
    letters = run("claim", [k.dlq, k.inflight, k.claims], [n, lease, batch])
    return [f"{batch}{i:04d}" for i in range(1, len(letters) + 1)]


def claimed(run: Any, k: Keys, n: int, lease: int = 10**13, batch: str = "b") -> list[bytes]:
    return list(run("claim", [k.dlq, k.inflight, k.claims], [n, lease, batch]))


def recover(run: Any, k: Keys, now: int, limit: int = 100) -> int:
    return int(run("recover", [k.inflight, k.dlq, k.claims], [now, limit]))


def route(
    run: Any,
    k: Keys,
    items: list[Any],
    *,
    max_length: int = 0,
    overflow: str = "reject-publish",
    now: int = 1000,
    hold: int = 5000,
) -> tuple[str, str]:
    args: list[Any] = [now, max_length, overflow, hold]
    for op, claim_id, payload, arg in items:
        args += [f"{op} {claim_id} {arg}", payload]
    statuses, min_score = run(
        "route", [k.inflight, k.retry, k.seq, k.parked, k.index, k.claims], args
    )
    return statuses.decode(), min_score.decode()


def test_claim_leases_oldest_first_and_keeps_identical_letters_apart(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"same", b"same", b"other")  # "same" was pushed first
    assert claimed(run, k, 2, lease=777, batch="x") == [b"same", b"same"]
    ids = [b"x0001", b"x0002"]  # the batch id and the 1-based position, four digits
    assert redis_client.zrange(k.inflight, 0, -1, withscores=True) == [(i, 777.0) for i in ids]
    assert redis_client.hgetall(k.claims) == {i: b"same" for i in ids}
    assert redis_client.lrange(k.dlq, 0, -1) == [b"other"]
    assert claimed(run, k, 10, batch="y") == [b"other"]
    assert claimed(run, k, 10, batch="z") == []
    assert redis_client.zcard(k.inflight) == redis_client.hlen(k.claims) == 3


def test_route_retries_in_fifo_order_within_a_millisecond(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"a", b"b")
    a, b = claim(run, k, 2)
    statuses, min_score = route(run, k, [["r", a, "0A", 5000], ["r", b, "0B", 5000]])
    assert statuses == "rr"
    scores = redis_client.zrange(k.retry, 0, -1, withscores=True)
    assert [m for m, _ in scores] == [b"0A", b"0B"]
    assert all(int(s) // SEQ == 5000 for _, s in scores)
    assert int(min_score) == int(scores[0][1])
    assert redis_client.zcard(k.inflight) == redis_client.hlen(k.claims) == 0


def test_route_skips_a_dead_letter_whose_lease_was_lost(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"a")
    (a,) = claim(run, k, 1, lease=10)
    assert recover(run, k, 11) == 1  # another router took it back
    statuses, min_score = route(run, k, [["r", a, "0A", 5000], ["p", a, "{}", "id1"]])
    assert (statuses, min_score) == ("ss", "")
    assert redis_client.zcard(k.retry) == 0 and redis_client.hlen(k.parked) == 0
    assert redis_client.lrange(k.dlq, 0, -1) == [b"a"]


def test_route_parks_with_index_and_respects_reject_publish(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"a", b"b")
    a, b = claim(run, k, 2)
    statuses, _ = route(
        run, k, [["p", a, '{"n":1}', "id-a"], ["p", b, '{"n":2}', "id-b"]], max_length=1, hold=4242
    )
    assert statuses == "ph"
    assert redis_client.hgetall(k.parked) == {b"id-a": b'{"n":1}'}
    assert redis_client.zrange(k.index, 0, -1, withscores=True) == [(b"id-a", 1000.0)]
    # The refused one stays leased, until the hold ends, and is then recovered.
    assert redis_client.zrange(k.inflight, 0, -1, withscores=True) == [(b.encode(), 4242.0)]
    assert redis_client.hgetall(k.claims) == {b.encode(): b"b"}
    assert recover(run, k, 4242) == 1
    assert redis_client.lrange(k.dlq, 0, -1) == [b"b"]
    assert redis_client.hlen(k.claims) == 0


def test_route_takes_parked_ids_with_spaces_and_newlines(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"a")
    (a,) = claim(run, k, 1)
    odd = "kept id\nfrom  another tool"
    assert route(run, k, [["p", a, "A", odd]])[0] == "p"
    assert redis_client.hgetall(k.parked) == {odd.encode(): b"A"}


def test_route_drop_head_drops_only_the_oldest(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"a", b"b", b"c")
    a, b, c = claim(run, k, 3)
    route(run, k, [["p", a, "A", "id-a"]], max_length=2, overflow="drop-head", now=1)
    route(run, k, [["p", b, "B", "id-b"]], max_length=2, overflow="drop-head", now=2)
    statuses, _ = route(run, k, [["p", c, "C", "id-c"]], max_length=2, overflow="drop-head", now=3)
    assert statuses == "p"
    assert redis_client.hgetall(k.parked) == {b"id-b": b"B", b"id-c": b"C"}
    assert redis_client.zrange(k.index, 0, -1) == [b"id-b", b"id-c"]


def test_recover_returns_only_expired_leases_to_the_next_pop(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.lpush(k.dlq, b"old")
    claim(run, k, 1, lease=100, batch="a")
    redis_client.lpush(k.dlq, b"young")
    claim(run, k, 1, lease=200, batch="b")
    redis_client.lpush(k.dlq, b"waiting")
    assert recover(run, k, 150) == 1
    assert redis_client.rpop(k.dlq) == b"old"  # claimed again before newer dead letters
    assert redis_client.zrange(k.inflight, 0, -1) == [b"b0001"]
    assert redis_client.hgetall(k.claims) == {b"b0001": b"young"}


def test_recover_puts_a_batch_back_in_claim_order(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    letters = [f"m{i}".encode() for i in range(12)]
    redis_client.lpush(k.dlq, *letters)
    claim(run, k, 5, lease=100, batch="a")
    claim(run, k, 7, lease=200, batch="b")
    assert recover(run, k, 1000, limit=100) == 12
    assert claimed(run, k, 100) == letters  # oldest first, as if never claimed
    recover(run, k, 10**14)


def test_recover_reads_leases_taken_before_claim_ids(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    # An older router leased "<n>|<dead letter>" members with no claims hash entry.
    redis_client.zadd(k.inflight, {b"41|old|letter": 100})
    assert recover(run, k, 150) == 1
    assert redis_client.lrange(k.dlq, 0, -1) == [b"old|letter"]
    assert redis_client.zcard(k.inflight) == 0


def test_move_moves_only_due_retries_to_kombu_priority_lists(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.zadd(
        k.retry,
        {"0first": 100 * SEQ + 1, "9prio9": 100 * SEQ + 2, "3prio3": 100 * SEQ + 3,
         "0second": 100 * SEQ + 4, "0later": 200 * SEQ + 5},
    )  # fmt: skip
    keys = [k.retry, k.work, k.work3, k.work6, k.work9]
    moved, next_score = run("move", keys, [(100 + 1) * SEQ - 1, 100])
    assert moved == 4
    assert int(next_score) == 200 * SEQ + 5
    assert redis_client.lrange(k.work, 0, -1) == [b"second", b"first"]  # RPOP takes "first"
    assert redis_client.lrange(k.work3, 0, -1) == [b"prio3"]
    assert redis_client.lrange(k.work9, 0, -1) == [b"prio9"]
    assert redis_client.zrange(k.retry, 0, -1) == [b"0later"]
    moved, next_score = run("move", keys, [(200 + 1) * SEQ - 1, 100])
    assert (moved, next_score) == (1, b"")


def test_move_without_priority_lists_uses_the_work_list(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.zadd(k.retry, {"9a": 1, "3b": 2})
    assert run("move", [k.retry, k.work], [SEQ, 100])[0] == 2  # Cluster: two keys only
    assert redis_client.lrange(k.work, 0, -1) == [b"b", b"a"]


def test_concurrent_movers_neither_duplicate_nor_lose(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    n = 5000
    redis_client.zadd(k.retry, {f"0m{i}": i for i in range(n)})
    keys = [k.retry, k.work, k.work3, k.work6, k.work9]
    totals: list[int] = []

    def mover() -> None:
        client = redis.Redis.from_url(REDIS_URL)
        move = script(client, "move")
        moved = 0
        while True:
            got, _ = move(keys=keys, args=[n * SEQ, 50])
            moved += got
            if got == 0:
                break
        totals.append(moved)
        client.close()

    threads = [threading.Thread(target=mover) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(totals) == n
    items = redis_client.lrange(k.work, 0, -1)
    assert len(items) == len(set(items)) == n


def test_expire_parked_drops_only_past_the_cutoff(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    redis_client.hset(k.parked, mapping={"a": "A", "b": "B"})
    redis_client.zadd(k.index, {"a": 10, "b": 20})
    assert run("expire_parked", [k.parked, k.index], [15, 100]) == 1
    assert redis_client.hgetall(k.parked) == {b"b": b"B"}
    assert redis_client.zrange(k.index, 0, -1) == [b"b"]


@pytest.mark.parametrize("name", ["claim", "recover", "route", "move", "expire_parked"])
def test_script_header_states_its_contract_and_scripts_stay_in_one_slot(name: str) -> None:
    from dlq_router.backends.redis.connection import lua_source

    text = lua_source(name)
    header = text.split("\n\n", 1)[0] if not text.startswith("--") else text
    assert text.startswith(f"-- {name}.lua:")
    assert "KEYS[1]" in header and "ARGV[1]" in header and "Returns" in header
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    assert "'KEYS'" not in code and "'SCAN'" not in code


def test_parked_replay_moves_in_order_per_list_and_reports_what_was_gone(
    run: Any, k: Keys, redis_client: redis.Redis
) -> None:
    odd = "id with spaces"
    redis_client.hset(k.parked, mapping={"a": "A", "b": "B", odd: "C"})
    redis_client.zadd(k.index, {"a": 1, "b": 2, odd: 3})
    args = ["1 a", "new-a", "2 b", "new-b", "1 gone", "x", f"1 {odd}", "new-c"]
    gone = run("parked_replay", [k.parked, k.index, k.work, k.work3], args)
    assert gone == [b"gone"]
    assert redis_client.lrange(k.work, 0, -1) == [b"new-c", b"new-a"]  # as two LPUSHes
    assert redis_client.lrange(k.work3, 0, -1) == [b"new-b"]
    assert redis_client.hlen(k.parked) == redis_client.zcard(k.index) == 0
