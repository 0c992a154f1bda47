"""The compiled hot path (dlq_router/native.py): what runs is what the sources say.

``make test`` runs the suite on the compiled modules, then the unit tests again with
``DLQ_ROUTER_PURE_PYTHON=1`` on the plain sources; the first test here fails if either
run is not what it claims to be.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlq_router import native

EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)
PROBE = (
    "import dlq_router.backends.rabbitmq.wire as w, dlq_router.policy as p\n"
    "from dlq_router import native\n"
    "t = w.Table(b'\\x0cdlq-attempts' + b'I' + (2).to_bytes(4, 'big'))\n"
    "print(native.select().compiled, t.ours['dlq-attempts'], w.__file__.endswith('.py'),"
    " p.__file__.endswith('.py'))\n"
)


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    out.update(extra)
    return out


def test_this_run_uses_what_it_claims() -> None:
    """Compiled unless DLQ_ROUTER_PURE_PYTHON=1 (``make install`` compiles them)."""
    files = {m: sys.modules[m].__file__ or "" for m in native.MODULES if m in sys.modules}
    assert files, "no hot module imported"
    if native.pure_requested():
        assert all(f.endswith(".py") for f in files.values()), files
        assert not native.select().compiled
    else:
        assert native.select() == native.Status(True, "compiled with mypyc"), (
            "the hot modules are not compiled: run make install"
        )
        assert all(f.endswith(EXTENSIONS) for f in files.values()), files
        assert native.changed_sources() == []


def test_the_switch_runs_the_sources_in_a_fresh_process() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env(**{native.PURE_ENV: "1"}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "2", "True", "True"]
    assert out.stderr == ""  # an operator's choice is not worth a warning
    version = subprocess.run(
        [sys.executable, "-m", "dlq_router", "--version"],
        env=env(**{native.PURE_ENV: "1"}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "dlq-router 0.1.0 (pure Python (DLQ_ROUTER_PURE_PYTHON=1))"


def test_a_source_changed_after_the_compile_runs_from_the_sources(tmp_path: Path) -> None:
    """A copy of the compiled package with one hot source edited: the edit runs, all hot
    modules come from their sources, and a warning says why; the untouched copy runs
    compiled."""
    copy = tmp_path / "dlq_router"
    shutil.copytree(native.ROOT / "dlq_router", copy, ignore=shutil.ignore_patterns("__pycache__"))
    run = [sys.executable, "-c", PROBE]
    same = subprocess.run(
        run, env=env(PYTHONPATH=str(tmp_path)), cwd=tmp_path, capture_output=True, text=True
    )
    assert same.returncode == 0, same.stderr
    assert same.stdout.split() == ["True", "2", "False", "False"]
    assert same.stderr == ""

    wire = copy / "backends" / "rabbitmq" / "wire.py"
    wire.write_text(
        wire.read_text().replace(
            "self.ours[key] = read_value(table, value, stop)",
            "self.ours[key] = 40 + read_value(table, value, stop)",
        )
    )
    edited = subprocess.run(
        run, env=env(PYTHONPATH=str(tmp_path)), cwd=tmp_path, capture_output=True, text=True
    )
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.split() == ["False", "42", "True", "True"]
    assert "StaleBuildWarning" in edited.stderr
    assert "wire.py changed since compiled: run make install" in edited.stderr


def test_a_missing_or_garbled_record_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.json"
    monkeypatch.setattr(native, "RECORD", record)
    monkeypatch.setattr(native, "compiled_files", lambda: [tmp_path / "x.so"])
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    assert native.changed_sources() is None
    assert not native.decide().compiled
    for garbled in ("", "[]", '{"sources": 3}', '{"sources": []}', "{"):
        record.write_text(garbled)
        assert native.changed_sources() is None, garbled
        assert "no build record" in native.decide().reason
    sources = native.digests()
    record.write_text(json.dumps({"sources": sources}))
    assert native.decide() == native.Status(True, "compiled with mypyc")
    sources["dlq_router.policy"] = "0" * 64
    record.write_text(json.dumps({"sources": sources}))
    assert native.decide().reason == "policy.py changed since compiled: run make install"
    monkeypatch.setattr(native, "source_path", lambda m: tmp_path / "gone" / f"{m}.py")
    assert native.decide() == native.Status(
        True, "compiled with mypyc (no sources to check against)"
    )
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv(native.PURE_ENV, value)
        assert native.decide().reason == "DLQ_ROUTER_PURE_PYTHON=1"
