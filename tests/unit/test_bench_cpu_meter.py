"""The benchmarks' reading of the broker's OS pid from ``rabbitmqctl eval 'os:getpid().'``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.benchmarks.cpu_meter import erlang_pid


@pytest.mark.parametrize(
    ("output", "pid"),
    [('"2943"\n', 2943), ('"17"', 17), ('\n  "4194303"  \n\n', 4194303), ("2943\n", 2943)],
)
def test_reads_the_pid(output: str, pid: int) -> None:
    assert erlang_pid(output) == pid


@pytest.mark.parametrize(
    "output",
    ["", "\n", '""', '"0"', '"-1"', '"4194304"', '"²"', '"12a"', "{badrpc,nodedown}", '"1 2"'],
)
def test_refuses_what_is_not_a_pid(output: str) -> None:
    with pytest.raises(ValueError):
        erlang_pid(output)


@given(st.integers(min_value=1, max_value=2**22 - 1), st.sampled_from(["", "\n", "\r\n"]))
def test_any_pid_round_trips(pid: int, end: str) -> None:
    assert erlang_pid(f'"{pid}"{end}') == pid


@given(st.text())
def test_anything_else_is_a_value_error_or_a_pid(text: str) -> None:
    try:
        pid = erlang_pid(text)
    except ValueError:
        return
    assert 0 < pid < 2**22
