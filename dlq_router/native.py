"""The router's hot path compiled with mypyc, and the way back to the sources.

``make install`` compiles ``MODULES`` (the per-message code: reading and splicing header
tables, the frame reader, the policy) with mypyc into one extension group, in place: a
shim ``<module>.cpython-*.so`` beside each ``.py``, the code in
``dlq_router/_native__mypyc.cpython-*.so``, and ``RECORD`` with each compiled source's
SHA-256. The sources are the same code: mypyc compiles the annotated Python that mypy
--strict checks, and the router spends about 30 % less CPU per dead letter with it
(README, "The compiled hot path"). A ``pip install`` without ``make`` gets the sources only.

Python imports an extension module in preference to a ``.py`` of the same name, so a
compiled module that no longer matches its source would run code nobody can read. Before
any of ``MODULES`` is imported (``dlq_router/__init__`` calls ``select``), this package
imports all of them from their ``.py`` files instead when

- ``DLQ_ROUTER_PURE_PYTHON=1`` is set (an operator's switch back to the plain sources,
  and what ``make install`` reads to build none), or
- any compiled source changed since it was compiled (``RECORD`` missing or a hash that
  differs): a ``StaleBuildWarning`` says so, and ``make install`` compiles them again.

All or nothing: the compiled modules call each other inside their shared library, so a
mix of compiled and source modules would hold two copies of the same classes. The
switch is a finder at the front of ``sys.meta_path`` that answers for ``MODULES`` only.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

MODULES: tuple[str, ...] = (
    "dlq_router.headers",
    "dlq_router.numbers",
    "dlq_router.durations",
    "dlq_router.names",
    "dlq_router.policy",
    "dlq_router.backends.rabbitmq.wire",
    "dlq_router.backends.rabbitmq.rawframes",
    "dlq_router.backends.rabbitmq.message",
    "dlq_router.backends.rabbitmq.budget",
    "dlq_router.backends.rabbitmq.coalesce",
    "dlq_router.backends.rabbitmq.router",
)
GROUP = "dlq_router._native"  # mypyc's group: its library is dlq_router/_native__mypyc.*.so
PURE_ENV = "DLQ_ROUTER_PURE_PYTHON"
ROOT = Path(__file__).resolve().parent.parent  # the directory that holds dlq_router/
RECORD = ROOT / "dlq_router" / "_native_build.json"


class StaleBuildWarning(RuntimeWarning):
    """Compiled modules that no longer match their sources: the sources run instead."""


@dataclass(frozen=True)
class Status:
    compiled: bool  # the MODULES in this process are the compiled ones
    reason: str  # why not, or "compiled with mypyc"


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def compiled_files() -> list[Path]:
    """What a compile left in the tree: the shims beside the sources and the group library."""
    found: list[Path] = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for module in (*MODULES, GROUP + "__mypyc"):
            path = ROOT.joinpath(*module.split("."))
            candidate = path.with_name(path.name + suffix)
            if candidate.exists():
                found.append(candidate)
    return found


def digests() -> dict[str, str]:
    """SHA-256 of each compiled module's source, as ``RECORD`` keeps them."""
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in MODULES}


def changed_sources() -> list[str] | None:
    """Modules whose source differs from what was compiled; None without a ``RECORD``."""
    try:
        recorded: Any = json.loads(RECORD.read_text())["sources"]
        now = digests()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recorded, dict):
        return None
    return [m for m in MODULES if recorded.get(m) != now[m]]


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def decide(found: list[Path] | None = None) -> Status:
    """Whether this process can use the compiled modules (reads files, imports nothing);
    ``found``: ``compiled_files()``, when the caller has listed them already."""
    if pure_requested():
        return Status(False, f"{PURE_ENV}=1")
    if not (compiled_files() if found is None else found):
        return Status(False, "not compiled: make install compiles it")
    if not all(source_path(m).is_file() for m in MODULES):
        # Compiled modules without their sources (a packaging of its own): nothing to
        # check them against and nothing else to run, so use them.
        return Status(True, "compiled with mypyc (no sources to check against)")
    changed = changed_sources()
    if changed is None:
        return Status(False, f"no build record ({RECORD.name}): run make install")
    if changed:
        names = ", ".join(m.rsplit(".", 1)[-1] + ".py" for m in changed)
        return Status(False, f"{names} changed since compiled: run make install")
    return Status(True, "compiled with mypyc")


class _Sources(importlib.abc.MetaPathFinder):
    """Imports ``MODULES`` from their ``.py`` files, whatever else lies beside them."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_STATUS: Status | None = None


def select() -> Status:
    """Decide once per process, before ``MODULES`` are imported (``dlq_router/__init__``)."""
    global _STATUS
    if _STATUS is None:
        found = compiled_files()
        status = decide(found)
        if not status.compiled and found:
            sys.meta_path.insert(0, _Sources())
            if not pure_requested():
                warnings.warn(
                    f"dlq_router: running the pure-Python sources: {status.reason}",
                    StaleBuildWarning,
                    stacklevel=2,
                )
        _STATUS = status
    return _STATUS


def describe() -> str:
    s = select()
    return "hot path compiled with mypyc" if s.compiled else f"pure Python ({s.reason})"
