"""The parking lot, broker-neutral: selectors, groups, summary rows, previews, export format.

Backends implement ``ParkingLot`` (``backends/*/parking.py``); the CLI (``cli/parked.py``,
``cli/replay.py``) only talks to that protocol and to the pure helpers here. Field names of
``summary_row``/``group_row``/``show_record``/``ReplayResult.as_dict`` are a stable interface
(documented in the README, "JSON output"): add fields, never rename them.

One module per concern, all re-exported here (``from dlq_router.parking import X``):

- ``messages``: header accessors, fingerprints, timestamps
- ``selector``: ``Selector``, ``parse_selector``, ``select``, ``missing_ids``
- ``render``: summary/group rows, ``show_record``, body previews, values as JSON
- ``jsonl``: JSONL export/import (``EXPORT_FORMAT``)
- ``replay``: replay options and result, rate limiter, progress callback
- ``lot``: the ``ParkingLot`` protocol
- ``summary``: ``LotSummary`` (count, age range, groups) folded from a scan

The submodules import each other, never this package, so there are no cycles: ``messages``
imports no other one; ``selector`` and ``render`` use ``messages``; ``jsonl`` uses ``messages``
and ``render``; ``replay`` imports no other one; ``lot`` uses ``selector`` and ``replay``;
``summary`` uses ``messages`` and ``render``.
"""

from dlq_router.parking.jsonl import EXPORT_FORMAT, export_line, import_line
from dlq_router.parking.lot import ParkingLot
from dlq_router.parking.messages import (
    FINGERPRINT_LENGTH,
    attempts,
    error_type,
    fingerprint,
    group_key,
    iso,
    message_fingerprint,
    now_ms,
    parked_at,
    reason,
    task_id,
    task_name,
)
from dlq_router.parking.render import (
    HISTORY_HEADERS,
    PICKLE_CONTENT_TYPE,
    PREVIEW_BYTES,
    BodyPreview,
    Group,
    from_json_value,
    group_row,
    groups,
    hex_preview,
    preview_body,
    show_record,
    summary_row,
    to_json_value,
)
from dlq_router.parking.replay import (
    Progress,
    RateLimiter,
    ReplayOptions,
    ReplayResult,
    no_progress,
)
from dlq_router.parking.selector import (
    Selector,
    missing_ids,
    newest_first,
    parse_selector,
    select,
)
from dlq_router.parking.summary import LotSummary, summarize

__all__ = [
    "EXPORT_FORMAT",
    "FINGERPRINT_LENGTH",
    "HISTORY_HEADERS",
    "PICKLE_CONTENT_TYPE",
    "PREVIEW_BYTES",
    "BodyPreview",
    "Group",
    "LotSummary",
    "ParkingLot",
    "Progress",
    "RateLimiter",
    "ReplayOptions",
    "ReplayResult",
    "Selector",
    "attempts",
    "error_type",
    "export_line",
    "fingerprint",
    "from_json_value",
    "group_key",
    "group_row",
    "groups",
    "hex_preview",
    "import_line",
    "iso",
    "message_fingerprint",
    "missing_ids",
    "newest_first",
    "no_progress",
    "now_ms",
    "parked_at",
    "parse_selector",
    "preview_body",
    "reason",
    "select",
    "show_record",
    "summarize",
    "summary_row",
    "task_id",
    "task_name",
    "to_json_value",
]
