"""``python -m tests.integration.faulty_router run ...``: the real ``dlq-router`` with one
bug planted for the per-message guard tests.

Routing a dead letter whose ``dlq-error-type`` is ``PlantedBug`` raises inside the router's
hot path (in place of ``policy.decide``), as a bug in the router would. Everything else is
the real router, connection, broker and CLI.
"""

from __future__ import annotations

from typing import Any

from dlq_router.backends.rabbitmq import router
from dlq_router.cli import main

PLANTED = "PlantedBug"
_decide = router.decide


def _faulty_decide(route: Any, failure: Any, **kwargs: Any) -> Any:
    if failure.headers.get("dlq-error-type") == PLANTED:
        raise RuntimeError("planted bug: this dead letter cannot be routed")
    return _decide(route, failure, **kwargs)


router.decide = _faulty_decide  # type: ignore[assignment]

if __name__ == "__main__":
    main()
