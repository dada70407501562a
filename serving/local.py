"""Start `bentoml serve` for this service as a subprocess on 127.0.0.1: what the tests and benchmarks talk to."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """The service as an operator starts it, configured only through COMPRESSOR_* environment variables."""

    def __init__(self, workdir: Path, env: dict[str, str], ready_timeout: float = 180, port: int | None = None) -> None:
        """`port`: a given one, so that a server restarted after a crash keeps its URL; by default a free one."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("COMPRESSOR_")}
        full_env.update({"PYTHONPATH": str(ROOT), "BENTOML_DO_NOT_TRACK": "True",
                         "BENTOML_HOME": str(workdir / "bentoml_home"), **env})
        self.log_path = workdir / f"server-{self.port}.log"
        self.log = self.log_path.open("a")  # a restart on the same port appends to its predecessor's log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "serving.service:Compressor", "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_ready(ready_timeout)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_tail())
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.crash()
        raise RuntimeError("server not ready in time:\n" + self.log_tail())

    def stop(self, timeout: float = 120) -> None:
        """Ctrl-C, as an operator stops it: the worker checkpoints its job and exits."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=timeout)

    def processes(self) -> list:
        """The server's process and every process under it (its workers, a running compressor); [] once it is gone."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def crash(self) -> None:
        """SIGKILL to every process the server started, a running compressor included: nothing cleans up."""
        import psutil

        processes = self.processes()
        if not processes:
            return
        for p in processes:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
