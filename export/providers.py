"""Choosing an ONNX Runtime execution provider honestly.

onnxruntime-gpu lists CUDA and TensorRT as *available* even on a machine
without a GPU, then prints an error and silently runs on the CPU. So we
create the session, ask it which providers it really uses, and report that;
ORT's own logging is turned down so that noise stays off the user's terminal.
"""
from __future__ import annotations

import os
from pathlib import Path

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class ProviderError(Exception):
    """The provider asked for cannot run here."""


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    if hasattr(ort, "preload_dlls"):
        try:  # lets ORT find the CUDA / cuDNN libraries that torch's wheels carry
            ort.preload_dlls()
        except Exception:
            pass
    return ort


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None, spinning: bool = True):
    """A session on `provider` ('auto' = CUDA if it really works, else CPU). Returns (session, provider used).

    `spinning`: ONNX Runtime's threads spin-wait for the next call (its default, the lowest latency). A server
    that shares its cores with training turns it off: between requests 10 ms apart a spinning session kept a
    whole core busy (benchmarks/RESULTS.md)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = threads or max(1, min(4, os.cpu_count() or 1))
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    wanted = ["cuda", "cpu"] if provider == "auto" else [provider]
    for name in wanted:
        if name not in PROVIDERS:
            raise ProviderError(f"unknown provider {name!r}; choose from auto, {', '.join(PROVIDERS)}")
        chain = [PROVIDERS[name]] + ([] if name == "cpu" else [PROVIDERS["cpu"]])
        session = ort.InferenceSession(str(path), opts, providers=chain)
        if session.get_providers()[0] == PROVIDERS[name]:
            return session, name
    raise ProviderError(f"execution provider {provider!r} is not usable on this machine (it fell back to the CPU)")
