"""JSONL export/import: one self-contained line per parked message, on either broker.

``EXPORT_FORMAT`` names the record format; ``import_line`` refuses anything else.
"""

from __future__ import annotations

import base64
import binascii
import json

from dlq_router.backends.base import ParkedMessage
from dlq_router.errors import UsageError
from dlq_router.parking.messages import parked_at
from dlq_router.parking.render import from_json_value, to_json_value

EXPORT_FORMAT = "dlq-router.parked.v1"


# --------------------------------------------------------------------------- export / import


def export_line(msg: ParkedMessage) -> str:
    """One JSONL line holding everything needed to park the message again, on either broker."""
    return json.dumps(
        {
            "format": EXPORT_FORMAT,
            "id": msg.id,
            "route": msg.route,
            "parked_at": parked_at(msg),
            "headers": to_json_value(msg.headers),
            "properties": to_json_value(msg.properties),
            "body": base64.b64encode(msg.body).decode("ascii"),
        },
        separators=(",", ":"),
    )


def import_line(line: str, where: str) -> ParkedMessage:
    """Parse one export line; ``where`` (file:line) names it in the error."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a {EXPORT_FORMAT} record")
        headers = from_json_value(data["headers"])
        properties = from_json_value(data["properties"])
        if not isinstance(headers, dict) or not isinstance(properties, dict):
            raise ValueError("headers and properties must be objects")
        return ParkedMessage(
            id=str(data["id"]),
            route=str(data["route"]),
            headers=headers,
            properties=properties,
            body=base64.b64decode(data["body"], validate=True),
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise UsageError(f"{where}: cannot import: {exc}") from None
