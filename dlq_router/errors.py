"""The one error tree of dlq-router.

Backends translate broker-client exceptions into these at their boundary (keeping the
original as ``__cause__``); the CLI catches ``DlqRouterError`` once and prints one line.

    DlqRouterError                  exit 1  anything the project raises on purpose
    ├── UsageError                  exit 2  bad input from the operator
    │   ├── TopologyError           exit 2  a topology file that does not validate
    │   └── SelectorError           exit 2  a malformed parked-message selector
    ├── BrokerError                 exit 2  the broker cannot be used at all
    │   └── BrokerUnavailable       exit 2  refused, bad credentials, missing vhost, no permission
    ├── TopologyConflict            exit 3  existing objects with different arguments
    ├── NotFound                    exit 4  an id or object that does not exist
    └── PartialFailure              exit 5  a bulk operation where some items failed

Interrupted commands exit 130, a closed stdout (``| head``) 141, quietly (both caught in
``cli.common.cli_errors``).
"""

from __future__ import annotations

from collections.abc import Sequence


class DlqRouterError(Exception):
    """Base of every error dlq-router raises on purpose."""

    exit_code = 1


class UsageError(DlqRouterError):
    exit_code = 2


class TopologyError(UsageError):
    """A topology file that cannot be read or does not validate."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: " + "; ".join(self.problems))


class SelectorError(UsageError):
    pass


class BrokerError(DlqRouterError):
    exit_code = 2


class BrokerUnavailable(BrokerError):
    """Connection refused, authentication failed, vhost missing or access refused."""


class TopologyConflict(DlqRouterError):
    exit_code = 3

    def __init__(self, conflicts: Sequence[str], outcome: str = "nothing was declared") -> None:
        self.conflicts = list(conflicts)  # "queue emails.retry.10s: x-message-ttl: ..."
        super().__init__(
            f"{len(self.conflicts)} existing object(s) differ from the topology; {outcome}"
        )


class NotFound(DlqRouterError):
    exit_code = 4


class PartialFailure(DlqRouterError):
    exit_code = 5
