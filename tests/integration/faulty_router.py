"""``python -m tests.integration.faulty_router run ...``: the real ``dlq-router`` with one
bug planted for the per-message guard tests.

Routing a dead letter whose ``dlq-error-type`` is ``PlantedBug`` raises inside the router's
hot path (in place of ``policy.decide``), as a bug in the router would. Everything else is
the real router, connection, broker and CLI, run from its sources: the plant replaces a
module global, which the compiled router (dlq_router/native.py) calls directly instead of
looking it up, so the process sets ``DLQ_ROUTER_PURE_PYTHON=1`` before it imports the
package (only when run: the tests import ``PLANTED`` from here).
"""

from __future__ import annotations

import os
from typing import Any

PLANTED = "PlantedBug"


def _run() -> None:
    os.environ["DLQ_ROUTER_PURE_PYTHON"] = "1"
    from dlq_router.backends.rabbitmq import router
    from dlq_router.cli import main

    assert router.__file__ is not None and router.__file__.endswith(".py"), router.__file__
    decide = router.decide

    def faulty_decide(route: Any, failure: Any, **kwargs: Any) -> Any:
        if failure.headers.get("dlq-error-type") == PLANTED:
            raise RuntimeError("planted bug: this dead letter cannot be routed")
        return decide(route, failure, **kwargs)

    router.decide = faulty_decide  # type: ignore[assignment]
    main()


if __name__ == "__main__":
    _run()
