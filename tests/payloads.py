"""Files an attacker would upload, shared by the loader's tests and the service's."""
from __future__ import annotations

import io
import os

import torch


class _Payload(torch.nn.Module):
    """TorchScript whose __setstate__ runs as the archive loads (here it only raises, to prove that it ran)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @torch.jit.export
    def __getstate__(self) -> bool:
        return self.training

    @torch.jit.export
    def __setstate__(self, state: bool) -> None:
        self.training = state
        raise RuntimeError("payload ran")


def torchscript_payload() -> bytes:
    """A TorchScript archive whose code raises 'payload ran' the moment it is loaded."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_Payload()), buffer)
    return buffer.getvalue()


class _Touch:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker) -> bytes:
    """A torch.save file whose unpickling runs `touch marker` (only a full, unrestricted unpickling runs it)."""
    buffer = io.BytesIO()
    torch.save({"x": _Touch(str(marker))}, buffer)
    return buffer.getvalue()
