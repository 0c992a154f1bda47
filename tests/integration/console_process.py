"""Run ``python -m dlq_router console`` as a real subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.router_process import free_port

TOKEN = "test-console-token-0123456789"


class ConsoleProcess:
    def __init__(self, topology_path: Path, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"console-{self.port}.log"
        self.cmd = [
            sys.executable,
            "-m",
            "dlq_router",
            "console",
            "-t",
            str(topology_path),
            "--port",
            str(self.port),
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ConsoleProcess:
        env = {**os.environ, "DLQ_ROUTER_CONSOLE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"console exited {self.proc.returncode}: {self.output}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.base + "/healthz", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"console not up after {timeout}s: {self.output}")

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
