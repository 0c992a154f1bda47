"""The topology file: broker URL plus routes, validated once and read by every backend.

Only this module knows the YAML shape; backends receive the validated ``Topology``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from dlq_router import endpoints
from dlq_router.durations import parse_duration_ms
from dlq_router.errors import TopologyError
from dlq_router.urls import broker_kind, normalize_url, url_port_problem

# RabbitMQ stores x-message-ttl as an unsigned 32-bit number of milliseconds (~49.7 days).
RABBITMQ_MAX_TTL_MS = 2**32 - 1

DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]

# Names end up as queue names and as Redis hash tags; braces would break the hash tag.
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} may only contain letters, digits and _ . : -")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Model):
    """When and how often a failed message is tried again."""

    delays: list[DurationMs] = Field(min_length=1)
    max_attempts: int = Field(ge=1)
    jitter: float = Field(default=0.0, ge=0.0, lt=1.0)
    # RabbitMQ realises jitter with this many fixed-TTL lanes per tier (TTL is static per
    # queue: RabbitMQ only expires messages at the head, so per-message TTL would block).
    jitter_lanes: int = Field(default=4, ge=2, le=16)

    @field_validator("delays")
    @classmethod
    def _increasing(cls, delays: list[int]) -> list[int]:
        for i in range(1, len(delays)):
            if delays[i] <= delays[i - 1]:
                raise ValueError(
                    f"delays must increase strictly: delays[{i}] ({delays[i]}ms) "
                    f"is not longer than delays[{i - 1}] ({delays[i - 1]}ms)"
                )
        return delays

    @model_validator(mode="after")
    def _ttl_limit(self) -> RetryPolicy:
        longest = round(self.delays[-1] * (1 + self.jitter))
        if longest > RABBITMQ_MAX_TTL_MS:
            raise ValueError(
                f"longest tier with jitter is {longest}ms, above RabbitMQ's x-message-ttl "
                f"limit of {RABBITMQ_MAX_TTL_MS}ms (about 49 days)"
            )
        return self


class Parking(_Model):
    """Where messages go when they will not be retried. Never drops unless told to."""

    max_length: int | None = Field(default=None, ge=1)
    retention: DurationMs | None = None
    # reject-publish: a full parking lot refuses new parks (the router holds them in the
    # DLQ and says so); drop-head: the oldest parked message is dropped, only if asked.
    overflow: Literal["reject-publish", "drop-head"] = "reject-publish"

    @field_validator("retention")
    @classmethod
    def _retention_limit(cls, value: int | None) -> int | None:
        if value is not None and value > RABBITMQ_MAX_TTL_MS:
            raise ValueError(f"retention of {value}ms is above RabbitMQ's limit")
        return value


class Route(_Model):
    """One work queue and everything dlq-router builds around it."""

    name: str
    queue: str = ""
    exchange: str = ""
    exchange_type: Literal["direct", "topic", "fanout", "headers"] = "direct"
    routing_key: str = ""
    queue_type: Literal["classic", "quorum"] = "classic"
    dead_letter_strategy: Literal["at-most-once", "at-least-once"] | None = None
    overflow: Literal["drop-head", "reject-publish"] | None = None
    retry: RetryPolicy
    non_retryable: list[str] = Field(default_factory=list)
    parking: Parking = Field(default_factory=Parking)

    @field_validator("name", "queue")
    @classmethod
    def _names(cls, value: str) -> str:
        return value and _check_name(value)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """queue defaults to name, routing_key to queue; quorum defaults to at-least-once."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if not data.get("queue") and isinstance(data.get("name"), str):
            data["queue"] = data["name"]
        if "routing_key" not in data and isinstance(data.get("queue"), str):
            data["routing_key"] = data["queue"]
        if data.get("queue_type") == "quorum":
            data.setdefault("dead_letter_strategy", "at-least-once")
            if data["dead_letter_strategy"] == "at-least-once":
                data.setdefault("overflow", "reject-publish")
        return data

    @model_validator(mode="after")
    def _dead_letter_strategy(self) -> Route:
        if self.dead_letter_strategy is not None and self.queue_type != "quorum":
            raise ValueError("dead_letter_strategy only applies to queue_type: quorum")
        if self.dead_letter_strategy == "at-least-once" and self.overflow != "reject-publish":
            raise ValueError(
                "dead_letter_strategy: at-least-once needs overflow: reject-publish "
                "(with drop-head RabbitMQ silently falls back to at-most-once)"
            )
        return self

    @property
    def max_attempts(self) -> int:
        return self.retry.max_attempts


class Tls(_Model):
    """TLS files for ``amqps://`` and ``rediss://``; paths are relative to the working dir."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class Topology(_Model):
    # hosts and tls come first: url's validator merges them into the URL as options.
    hosts: list[str] = Field(default_factory=list)
    tls: Tls = Field(default_factory=Tls)
    # validate_default: the default URL gets hosts: and tls: merged in as well
    url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/%2F", validate_default=True)
    prefix: str = ""
    routes: list[Route] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            endpoints.parse_host(host)
        return hosts

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        """Check the scheme, merge ``hosts:`` and ``tls:`` in as URL options (the URL's own
        options win), and check the options: every backend reads them from the URL."""
        broker_kind(value)
        problem = url_port_problem(value)
        if problem:
            raise ValueError(problem)
        # A password typed with a bare @ / : or % is encoded here, so the clients (which
        # split URLs with urllib) see the host the operator meant and never a password piece.
        value = normalize_url(value)
        options: dict[str, str] = {}
        if info.data.get("hosts"):
            options["hosts"] = ",".join(info.data["hosts"])
        tls = info.data.get("tls")
        if isinstance(tls, Tls):
            options.update(tls.model_dump(exclude_none=True))
        value = endpoints.with_options(value, options)
        endpoints.check_files(endpoints.parse(value))
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value and _check_name(value)

    @field_validator("routes")
    @classmethod
    def _unique(cls, routes: list[Route]) -> list[Route]:
        seen: dict[tuple[str, str], int] = {}
        for i, route in enumerate(routes):
            for label, key in (("name", route.name), ("queue", route.queue)):
                if (label, key) in seen:
                    j = seen[(label, key)]
                    raise ValueError(f"routes[{i}] repeats the {label} {key!r} of routes[{j}]")
                seen[(label, key)] = i
        return routes

    def route(self, name: str) -> Route:
        for route in self.routes:
            if route.name == name:
                return route
        known = ", ".join(r.name for r in self.routes)
        raise KeyError(f"no route named {name!r} (routes: {known})")

    @property
    def kind(self) -> str:
        return broker_kind(self.url)


class _UrlSettings(BaseSettings):
    """``DLQ_ROUTER_URL`` overrides the file's URL; ``--url`` overrides both."""

    model_config = SettingsConfigDict(env_prefix="DLQ_ROUTER_", extra="ignore")
    url: str | None = None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return msg


def parse_topology(data: Any, source: str = "<topology>", url: str | None = None) -> Topology:
    """Validate already-loaded data; raise ``TopologyError`` naming every bad field."""
    if not isinstance(data, dict):
        raise TopologyError(source, ["expected a mapping with 'routes' at the top level"])
    override = url or _UrlSettings().url
    if override:
        data = {**data, "url": override}
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise TopologyError(source, problems) from None


def load_topology(path: str | Path, url: str | None = None) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), [exc.strerror or str(exc)]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    return parse_topology(data, str(path), url)
