"""``dlq-router console``: a small server-rendered web console for the parking lot.

Starlette + Jinja2 templates + plain HTML forms, served by uvicorn; no JavaScript at all.
It calls the same functions as the CLI (``Backend.status``, ``parse_selector``,
``ParkingLot.iter/scan/get/replay/purge``, ``summary_row``, ``show_record``, ``group_row``).

- ``app``: routes and pages
- ``forms``: query strings and form fields -> ``Selector`` (through ``parse_selector``)
- ``security``: the action token, the session cookie and CSRF tokens
"""

from dlq_router.console.app import create_app

__all__ = ["create_app"]
