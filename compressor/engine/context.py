"""Where a run happens: its configuration, folder, device, process group and how it talks to the user."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from compressor import distributed
from compressor.config import RunConfig
from compressor.errors import CompressorError
from compressor.run_folder import RunPaths


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def describe_devices(names: list[str]) -> str:
    """One rank's device, or what several ranks ran on: '2 × NVIDIA H100' (one process per device)."""
    if len(names) == 1:
        return names[0]
    counts = {n: names.count(n) for n in dict.fromkeys(names)}
    return ", ".join(f"{c} × {n}" for n, c in counts.items()) + f" ({len(names)} processes)"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CompressorError("--device cuda was asked for, but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunContext:
    """What every part of a run reads: the configuration (which set-up resolves further), the run folder, this
    rank's place in the world and its device. Only rank 0 writes files and talks to the user."""

    cfg: RunConfig
    paths: RunPaths
    world: distributed.World
    device: torch.device
    quiet: bool
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.on_cuda

    @property
    def work_dir(self):
        return self.paths.rank_dir(self.world.rank)

    def amp(self):
        """bf16 autocast on CUDA (where asked), nothing elsewhere: a fresh context per use."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else contextlib.nullcontext()

    def say(self, text: str) -> None:
        """A line for the user: rank 0's, unless the run is quiet."""
        if self.is_main and not self.quiet:
            print(text)

    def warn(self, text: str) -> None:
        """A warning: rank 0's, quiet or not, above the progress bar."""
        if self.is_main:
            tqdm.write(f"warning: {text}")


def open_context(cfg: RunConfig, quiet: bool) -> RunContext:
    """The run folder made and proved writable, then the process group joined (a world of one without torchrun)."""
    started = time.time()
    world = distributed.from_environment()
    paths = RunPaths(cfg.out_dir)
    work_dir = paths.rank_dir(world.rank)
    try:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / ".write_test").touch()
        (work_dir / ".write_test").unlink()
    except OSError as exc:
        raise CompressorError(f"cannot write to output folder {paths.root}: {exc.strerror or exc}") from None
    device = distributed.start(world, resolve_device(cfg.device))
    return RunContext(cfg, paths, world, device, quiet, started)
