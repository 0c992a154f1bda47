"""The RabbitMQ router's byte budget accounting (the channel side is tested on the broker,
in tests/integration/test_rabbit_byte_budget.py)."""

from __future__ import annotations

from dlq_router.backends.rabbitmq.budget import WIDEN_EVERY, ByteBudget

KIB = 1024


def test_pauses_past_the_budget_and_resumes_at_half() -> None:
    b = ByteBudget(1024 * KIB, prefetch=2000, consumers=1)
    assert [b.add(tag, 256 * KIB) for tag in range(1, 5)] == [False] * 4  # exactly 1 MiB
    assert b.add(5, 256 * KIB)  # past it
    b.paused = True
    assert not b.add(6, 256 * KIB)  # already paused: no second pause
    for tag in (1, 2, 3):
        b.release(tag)
        assert not b.may_resume()  # 1.25 MiB, 1 MiB, 768 KiB: above half
    b.release(4)
    assert b.held == 512 * KIB and b.may_resume()
    b.release(99)  # unknown tags (rejected by pika, never counted) change nothing
    assert b.held == 512 * KIB


def test_window_fits_the_budget_at_the_average_size_per_consumer() -> None:
    b = ByteBudget(1024 * KIB, prefetch=2000, consumers=1)
    assert b.window == 2000  # nothing seen yet: the configured prefetch
    b.add(1, 256 * KIB)
    assert b.fitting_window() == 4
    assert ByteBudget(64 * KIB, 2000, 1).fitting_window() == 2000  # nothing seen: capped
    two = ByteBudget(1024 * KIB, prefetch=2000, consumers=2)
    two.add(1, 256 * KIB)
    assert two.fitting_window() == 2  # each route's consumer gets its share
    huge = ByteBudget(1024 * KIB, prefetch=2000, consumers=1)
    huge.add(1, 10 * 1024 * KIB)
    assert huge.fitting_window() == 1  # never zero: one dead letter at a time still flows


def test_average_follows_new_sizes_and_the_window_widens_in_doublings() -> None:
    b = ByteBudget(1024 * KIB, prefetch=2000, consumers=1)
    b.add(1, 256 * KIB)
    b.consuming_with(b.fitting_window(), now=100.0)
    assert b.window == 4
    assert b.wider_window(now=200.0) is None  # still big bodies: no change
    for tag in range(2, 400):
        b.add(tag, 1 * KIB)
        b.release(tag)
    assert b.avg_size < 2 * KIB
    assert b.wider_window(now=100.0 + WIDEN_EVERY / 2) is None  # too soon after a change
    wider = b.wider_window(now=100.0 + WIDEN_EVERY)
    assert wider is not None and 500 <= wider <= 1024
    b.paused = True
    assert b.wider_window(now=1000.0) is None  # paused: resuming picks the window


def test_reset_keeps_what_was_learnt_about_sizes() -> None:
    b = ByteBudget(1024 * KIB, prefetch=2000, consumers=1)
    b.add(1, 256 * KIB)
    b.paused = True
    b.reset()  # a reconnect: the broker took every unacked delivery back
    assert (b.held, b.sizes, b.paused) == (0, {}, False)
    assert b.window == 4  # the next connection starts with the window that fits
