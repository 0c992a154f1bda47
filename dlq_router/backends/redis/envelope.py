"""kombu's Redis transport message format: read the envelope, never the body.

A message in a kombu work list is a JSON object::

    {"body": "<str, often base64>", "content-encoding": ..., "content-type": ...,
     "headers": {...}, "properties": {"delivery_info": {"exchange", "routing_key"},
     "delivery_tag": "<uuid>", "priority": 0, "body_encoding": "base64", ...}}

Only ``headers`` (and, for a retry, ``properties.delivery_tag``) are rewritten; every other
field goes back out exactly as it came in. ``body`` is an opaque string and never decoded.
"""

from __future__ import annotations

import base64
import json
import math
from bisect import bisect
from dataclasses import dataclass
from typing import Any

from dlq_router import numbers
from dlq_router.ids import new_id

# kombu.transport.redis: Channel.sep and PRIORITY_STEPS. A message of priority p goes to
# the list ``queue + SEP + step`` (just ``queue`` for step 0), step = the largest step <= p.
# Workers BRPOP the lists in step order, so on Redis *lower* numbers are served first.
SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


# json.dumps' defaults without the cycle check: parsed JSON has no cycles (same output).
_encode = json.JSONEncoder(check_circular=False).encode


class Malformed(ValueError):
    """A dead letter that is not a kombu envelope; it is parked as raw bytes."""


@dataclass
class Envelope:
    data: dict[str, Any]

    @property
    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = self.data.get("headers") or {}
        return headers

    @property
    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = self.data["properties"]
        return props

    @property
    def delivery_info(self) -> dict[str, Any]:
        info = self.properties.get("delivery_info")
        return info if isinstance(info, dict) else {}

    def priority_step(self) -> int:
        """kombu's ``_get_message_priority`` + ``priority``: the list this message goes to."""
        priority = numbers.priority(self.properties.get("priority"))
        return PRIORITY_STEPS[bisect(PRIORITY_STEPS, priority) - 1]

    def with_headers(self, headers: dict[str, Any], *, new_delivery_tag: bool) -> str:
        """The envelope as JSON with ``headers`` replaced (and a fresh delivery tag).

        A retry is a new publish, so it gets a new ``delivery_tag`` the way kombu stamps one
        on every publish; the worker's unacked bookkeeping is keyed by it.
        """
        out = dict(self.data)
        out["headers"] = headers
        if new_delivery_tag:
            out["properties"] = {**self.properties, "delivery_tag": new_id()}
        return _encode(out)


def _refuse_constant(name: str) -> Any:
    raise Malformed(f"not JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400 is valid JSON, but no double holds it
        raise Malformed(f"not JSON: the number {text[:40]} is out of range")
    return value


# Strict RFC 8259 JSON: Python's json accepts NaN and Infinity and turns 1e400 into inf;
# kombu's own int(priority) then raises OverflowError. Such an envelope is parked as
# malformed with its raw bytes, like any other non-JSON dead letter.
_decode = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float).decode


def parse(raw: bytes) -> Envelope:
    """Read a dead letter; ``Malformed`` when it is not a kombu envelope."""
    try:
        # Decode as UTF-8 first: json.loads(bytes) would guess UTF-16/32 from the first bytes.
        data = _decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Malformed(f"not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from None
    except Malformed:
        raise
    except RecursionError:
        raise Malformed("not JSON this router can read: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (int's own limit)
        raise Malformed(f"not JSON this router can read: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"a JSON {type(data).__name__}, not a kombu envelope object")
    if not isinstance(data.get("properties"), dict):
        raise Malformed("no 'properties' object (kombu needs its delivery_tag)")
    if data.get("headers") is not None and not isinstance(data["headers"], dict):
        raise Malformed("'headers' is not an object")
    return Envelope(data)


def wrap_malformed(raw: bytes, headers: dict[str, Any], queue: str) -> str:
    """An envelope that carries unreadable bytes unchanged (base64) into the parking lot."""
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode("ascii"),
            "content-encoding": "binary",
            "content-type": "application/octet-stream",
            "headers": headers,
            "properties": {
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_tag": new_id(),
                "priority": 0,
            },
        }
    )


def work_list(queue: str, step: int) -> str:
    """kombu's ``_q_for_pri``: the list name for a priority step."""
    return f"{queue}{SEP}{step}" if step else queue
