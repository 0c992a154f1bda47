"""``declare`` on RabbitMQ: probe every object, refuse on any conflict, then create.

AMQP cannot read back a queue's arguments, so each existing object is re-declared with the
expected arguments on a throwaway channel: equal arguments are a no-op, different ones get
406 PRECONDITION_FAILED (which closes that channel, not the connection). Missing objects are
only found with passive declares, so probing never creates anything.
"""

from __future__ import annotations

import logging
from typing import Any

import pika
import pika.exceptions as pe

from dlq_router.backends.base import DeclareReport, PlanItem
from dlq_router.backends.rabbitmq.connection import access_refused, describe, explain_406
from dlq_router.backends.rabbitmq.spec import BindingSpec, ExchangeSpec, QueueSpec, Spec
from dlq_router.errors import BrokerUnavailable, DlqRouterError

log = logging.getLogger("dlq_router.declare")


def _fmt_args(args: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(args.items()))


def _detail(spec: Spec) -> str:
    if isinstance(spec, ExchangeSpec):
        return f"type={spec.type} durable"
    if isinstance(spec, QueueSpec):
        return ("durable " + _fmt_args(spec.arguments)).strip()
    return ""


def _declare(ch: Any, spec: Spec, *, passive: bool = False) -> None:
    if isinstance(spec, ExchangeSpec):
        ch.exchange_declare(spec.name, spec.type, passive=passive, durable=True)
    elif isinstance(spec, QueueSpec):
        ch.queue_declare(spec.name, passive=passive, durable=True, arguments=spec.arguments)
    else:
        ch.queue_bind(spec.queue, spec.exchange, routing_key=spec.routing_key)


class Declarer:
    def __init__(self, connection: pika.BlockingConnection, url: str) -> None:
        self.connection = connection
        self.url = url
        self._ch: Any = None

    def _channel(self) -> Any:
        if self._ch is None or not self._ch.is_open:
            self._ch = self.connection.channel()
        return self._ch

    def _refused(self, exc: pe.ChannelClosedByBroker, spec: Spec) -> DlqRouterError:
        self._ch = None
        if exc.reply_code == 403:
            # queue.bind needs write on the queue and read on the exchange; the rest of
            # declare (declaring, and deleting on rollback) needs configure.
            action = "configure"
            if isinstance(spec, BindingSpec):
                action = "write to" if f"queue '{spec.queue}'" in exc.reply_text else "read from"
            return BrokerUnavailable(access_refused(exc.reply_text, action))
        return BrokerUnavailable(f"{spec.kind} {spec.name!r}: {exc.reply_code} {exc.reply_text}")

    def probe(self, spec: Spec, existing: set[str]) -> PlanItem:
        detail = _detail(spec)
        if isinstance(spec, BindingSpec):
            # Bindings cannot be read over AMQP; queue.bind is idempotent, so it is applied
            # again and reported unchanged when both ends already existed unchanged.
            both = spec.exchange in existing and spec.queue in existing
            return PlanItem("binding", spec.name, "unchanged" if both else "create")
        try:
            _declare(self._channel(), spec, passive=True)
        except pe.ChannelClosedByBroker as exc:
            self._ch = None
            if exc.reply_code == 404:
                return PlanItem(spec.kind, spec.name, "create", detail)
            if exc.reply_code == 405:  # RESOURCE_LOCKED: exclusive queue of another conn
                return PlanItem(spec.kind, spec.name, "conflict", exc.reply_text)
            raise self._refused(exc, spec) from exc
        try:
            _declare(self._channel(), spec)
        except pe.ChannelClosedByBroker as exc:
            self._ch = None
            if exc.reply_code == 406:
                return PlanItem(spec.kind, spec.name, "conflict", explain_406(exc.reply_text))
            raise self._refused(exc, spec) from exc
        existing.add(spec.name)
        return PlanItem(spec.kind, spec.name, "unchanged", detail)

    def plan(self, specs: list[Spec]) -> list[PlanItem]:
        existing: set[str] = {""}  # the default exchange always exists
        return [self.probe(spec, existing) for spec in specs]

    def apply(self, specs: list[Spec], items: list[PlanItem]) -> None:
        """Create what the plan says is missing; on any failure delete what this run made."""
        created: list[Spec] = []
        try:
            for spec, item in zip(specs, items, strict=True):
                _declare(self._channel(), spec)
                if item.status == "create" and not isinstance(spec, BindingSpec):
                    created.append(spec)
        except pe.ChannelClosedByBroker as exc:
            self._rollback(created)
            raise self._refused(exc, spec) from exc
        except (pe.AMQPError, OSError) as exc:
            self._rollback(created)
            raise BrokerUnavailable(describe(exc, self.url)) from exc

    def _rollback(self, created: list[Spec]) -> None:
        for spec in reversed(created):
            try:
                ch = self._channel()
                if isinstance(spec, QueueSpec):
                    ch.queue_delete(spec.name)
                elif isinstance(spec, ExchangeSpec):
                    ch.exchange_delete(spec.name)
            except (pe.AMQPError, OSError):
                log.error("could not roll back %s %r; delete it by hand", spec.kind, spec.name)
                self._ch = None


def declare(
    connection: pika.BlockingConnection, url: str, specs: list[Spec], *, dry_run: bool
) -> DeclareReport:
    declarer = Declarer(connection, url)
    try:
        items = declarer.plan(specs)
    except (pe.AMQPConnectionError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, url)) from exc
    report = DeclareReport(items)
    if report.conflicts or dry_run:
        return report  # the caller reports conflicts (exit 3); nothing was touched
    if any(i.status == "create" for i in items):
        declarer.apply(specs, items)
    report.applied = True
    return report
