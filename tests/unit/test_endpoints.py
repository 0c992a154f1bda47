"""URL options for failover hosts and TLS files (dlq_router/endpoints.py) and their
merging from the topology's ``hosts:`` and ``tls:`` fields."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlq_router import endpoints
from dlq_router.backends.rabbitmq.connection import parameters_list
from dlq_router.errors import TopologyError
from dlq_router.topology import parse_topology

ROUTE = {"name": "emails", "retry": {"delays": ["1s"], "max_attempts": 2}}


def topo(**top: Any) -> Any:
    return parse_topology({"routes": [ROUTE], **top}, "<test>")


def test_hosts_become_one_url_each_with_the_same_credentials_vhost_and_query() -> None:
    url = "amqp://u:p%40ss@n1:5672/vh?heartbeat=10&hosts=n2:5673,[::1]:5674,n3"
    ends = endpoints.parse(url)
    assert ends.urls == (
        "amqp://u:p%40ss@n1:5672/vh?heartbeat=10",
        "amqp://u:p%40ss@n2:5673/vh?heartbeat=10",
        "amqp://u:p%40ss@[::1]:5674/vh?heartbeat=10",
        "amqp://u:p%40ss@n3/vh?heartbeat=10",
    )
    params = parameters_list(url)
    assert [(p.host, p.port) for p in params] == [
        ("n1", 5672),
        ("n2", 5673),
        ("::1", 5674),
        ("n3", 5672),
    ]
    assert {p.virtual_host for p in params} == {"vh"}
    assert {p.credentials.password for p in params} == {"p@ss"}


def test_topology_hosts_and_tls_are_merged_into_the_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    t = topo(
        url="amqps://g:g@n1:5671/%2F",
        hosts=["n2:5671", "n3"],
        tls={"ca_file": str(ca)},
    )
    ends = endpoints.parse(t.url)
    assert [u.split("@")[1].split("/")[0] for u in ends.urls] == ["n1:5671", "n2:5671", "n3"]
    assert ends.ca_file == str(ca)
    assert ends.cert_file is None


def test_url_options_win_over_the_topology(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("x")
    b.write_text("x")
    t = topo(url=f"rediss://h:6380/0?ca_file={b}", tls={"ca_file": str(a)})
    assert endpoints.parse(t.url).ca_file == str(b)


def test_a_url_without_options_is_left_as_it_is() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=5"
    assert topo(url=url).url == url
    assert endpoints.parse(url).urls == (url,)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"hosts": ["n2:0"]}, "hosts: 'n2:0': port 0 is not in 1-65535"),
        ({"hosts": ["n2:x"]}, "hosts: 'n2:x' is not host or host:port"),
        ({"url": "amqp://h/?hosts=a,,b"}, "url: hosts has an empty entry"),
        (
            {"url": "redis://h:6379/0", "hosts": ["b"]},
            "url: hosts applies to amqp:// and amqps://",
        ),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "url: ca_file, cert_file and key_file"),
        (
            {"url": "amqps://h/", "tls": {"ca_file": "/nonexistent/ca.pem"}},
            "url: ca_file '/nonexistent/ca.pem': no such file",
        ),
        ({"url": "amqps://h/?key_file=/etc/hostname"}, "url: key_file needs cert_file"),
        ({"url": "amqps://h/?ca_file=a&ca_file=b"}, "url: URL option 'ca_file' is given twice"),
        ({"tls": {"ca": "x"}}, "tls.ca: unknown key"),
    ],
)
def test_bad_hosts_and_tls_options_name_the_field(top: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as err:
        topo(**top)
    assert message in str(err.value)


def test_the_url_override_gets_the_topology_options() -> None:
    t = parse_topology(
        {"routes": [ROUTE], "hosts": ["n2:5673"]}, "<test>", url="amqp://g:g@n1:5672/%2F"
    )
    assert endpoints.parse(t.url).urls[1] == "amqp://g:g@n2:5673/%2F"


hostnames = st.from_regex(r"[a-z][a-z0-9.\-]{0,20}", fullmatch=True)
ports = st.integers(1, 65535)


@given(st.lists(st.tuples(hostnames, st.none() | ports), min_size=1, max_size=5))
def test_any_host_list_round_trips(hosts: list[tuple[str, int | None]]) -> None:
    text = ",".join(h if p is None else f"{h}:{p}" for h, p in hosts)
    ends = endpoints.parse(f"amqp://u:p@first:1/v?hosts={text}")
    params = parameters_list(f"amqp://u:p@first:1/v?hosts={text}")
    want = list(dict.fromkeys([("first", 1), *((h, p or 5672) for h, p in hosts)]))
    got = list(dict.fromkeys((p.host, p.port) for p in params))
    assert got == want
    assert all(u.startswith("amqp://u:p@") and u.endswith("/v") for u in ends.urls)


@given(st.text(max_size=40))
def test_parse_never_raises_anything_but_value_error(text: str) -> None:
    for url in (f"amqp://h/?hosts={text}", f"amqps://h/?ca_file={text}", text):
        with contextlib.suppress(ValueError):
            endpoints.parse(url)


@given(st.text(max_size=30))
def test_parse_host_accepts_only_host_and_valid_port(text: str) -> None:
    try:
        host, port = endpoints.parse_host(text)
    except ValueError:
        return
    assert host and ("," not in host) and ("/" not in host) and ("@" not in host)
    assert port is None or 1 <= port <= 65535
