"""Compile dlq_router's hot modules with mypyc, in place (``make install`` runs this).

    .venv/bin/python .ci/native.py          # compile if a source changed, else nothing
    DLQ_ROUTER_PURE_PYTHON=1 ... native.py  # remove any compiled modules instead

What is compiled, where it goes and how the package chooses at import: dlq_router/native.py.
Needs gcc and the Python headers (the machine has both) and the venv's mypy (mypyc ships
with it), which type-checks the modules with every dependency installed, as ``make lint``
does. A failed compile fails ``make install``: nothing is left half built, and the sources
still run. After compiling, a fresh interpreter must report the compiled modules in use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

# A stale compile is what this script is here to replace, and setuptools' notes on its own
# configuration are not for the user.
warnings.filterwarnings("ignore", message="dlq_router: running the pure-Python sources")
warnings.filterwarnings("ignore", message=".*is still \\*beta\\*")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlq_router import native  # noqa: E402  (after the path is set)


def clean() -> None:
    for path in native.compiled_files():
        path.unlink()
    native.RECORD.unlink(missing_ok=True)


def compile_modules() -> None:
    from mypyc.build import mypycify  # mypy's compiler: imported only to build
    from setuptools import setup

    paths = [str(native.source_path(m).relative_to(ROOT)) for m in native.MODULES]
    with tempfile.TemporaryDirectory(prefix="dlq-router-mypyc-") as tmp:
        extensions = mypycify(paths, group_name=native.GROUP, target_dir=str(Path(tmp) / "c"))
        setup(
            name="dlq-router-native",
            ext_modules=extensions,
            script_args=["--quiet", "build_ext", "--inplace", "--build-temp", tmp],
        )


def main() -> int:
    os.chdir(ROOT)
    if native.pure_requested():
        clean()
        print(f"{native.PURE_ENV}=1: dlq_router runs from its sources (nothing compiled)")
        return 0
    if native.compiled_files() and native.changed_sources() == []:
        return 0  # up to date
    clean()
    sources = native.digests()
    print(f"compiling {len(native.MODULES)} hot modules with mypyc ...", flush=True)
    try:
        compile_modules()
    except BaseException:
        clean()
        raise
    if native.digests() != sources:  # edited while compiling: do not vouch for it
        clean()
        print("a source changed during the compile; run make install again", file=sys.stderr)
        return 1
    native.RECORD.write_text(json.dumps({"sources": sources}, indent=1) + "\n")
    # Every compiled module must load as an extension module, not only be chosen.
    probe = (
        "import importlib; from dlq_router import native\n"
        "files = [importlib.import_module(m).__file__ or '' for m in native.MODULES]\n"
        "ok = native.select().compiled and not any(f.endswith('.py') for f in files)\n"
        "print(ok, native.describe())"
    )
    check = subprocess.run(
        [sys.executable, "-c", probe],
        env={k: v for k, v in os.environ.items() if k != native.PURE_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0 or not check.stdout.startswith("True ") or check.stderr:
        clean()
        print(f"the compiled modules do not load: {check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    print(f"dlq_router: {check.stdout.strip().removeprefix('True ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
