"""A run's state: everything a checkpoint saves, Ctrl-C saves and `--resume` loads, in one object.

The step, the student and generator, their optimisers and schedules, the method's own state (its pool), every
random stream (each rank's global one, the synthesis noise, selection's held-out draws), selection and the
history of evaluations. Under torchrun `state_dict()` is collective: every rank's random state and a digest of
every rank's student are gathered, and a divergence is an error.
"""
from __future__ import annotations

import json

import torch

from compressor import distributed
from compressor.engine.build import Parts
from compressor.engine.checkpoint import host_copy
from compressor.engine.context import RunContext
from compressor.engine.optim import make_optimizer, make_schedule
from compressor.engine.selection import Selection
from compressor.errors import CompressorError


class TrainState:
    def __init__(self, ctx: RunContext, parts: Parts, selection: Selection) -> None:
        cfg = ctx.cfg
        self.world, self.device = ctx.world, ctx.device
        self.parts, self.selection = parts, selection
        self.step = 0  # rounds done
        self.opt_s = make_optimizer(parts.student.parameters(), cfg.student_optim, ctx.device)
        self.opt_g = make_optimizer(parts.generator.parameters(), cfg.generator_optim, ctx.device)
        self.sched_s = make_schedule(self.opt_s, cfg.student_optim, cfg.steps)
        self.sched_g = make_schedule(self.opt_g, cfg.generator_optim, cfg.steps)
        # The synthesis noise: one global draw that every rank makes alike and takes its own slice of, so that the
        # synthesis batch, and the objective, are the same whatever the number of ranks.
        self.noise_rng = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 20_000)
        self.history: list[dict] = []  # rank 0's evaluation records

    def noise(self, global_batch: int, noise_dim: int) -> torch.Tensor:
        """This rank's slice of one global draw of noise (the same draw on every rank)."""
        z = torch.randn(global_batch, noise_dim, device=self.device, generator=self.noise_rng)
        return distributed.local_slice(z)

    def _own_rng(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def state_dict(self) -> dict:
        """The checkpoint. Every rank must call it together (it gathers their random states and digests)."""
        ranks = distributed.gather_objects(host_copy(self._own_rng()))
        digests = distributed.gather_objects(distributed.digest(self.parts.student))
        if len(set(digests)) > 1:
            raise CompressorError(f"the ranks' students have diverged at step {self.step} (digests {digests}); "
                                  "this is a bug, please report it")
        return {
            "step": self.step,
            "student": self.parts.student.state_dict(),
            "generator": self.parts.generator.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "sched_s": self.sched_s.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "method": self.parts.method.state_dict(),
            "rng": {"ranks": ranks, "noise": self.noise_rng.get_state(), "heldout": self.selection.rng.get_state()},
            "world_size": self.world.size,
            "student_digests": digests,  # one per rank: equal, or the ranks' students have diverged
            "selection": self.selection.state_dict(),
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        if int(ckpt["world_size"]) != self.world.size:
            raise CompressorError(f"this run was checkpointed by {ckpt['world_size']} process(es); resume it with the "
                                  f"same number (torchrun --nproc-per-node/--nnodes), not {self.world.size}")
        self.parts.student.load_state_dict(ckpt["student"])
        self.parts.generator.load_state_dict(ckpt["generator"])
        self.opt_s.load_state_dict(ckpt["opt_s"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.sched_s.load_state_dict(ckpt["sched_s"])
        self.sched_g.load_state_dict(ckpt["sched_g"])
        self.parts.method.load_state_dict(ckpt["method"])
        rng = ckpt["rng"]
        own = rng["ranks"][self.world.rank]
        torch.set_rng_state(own["torch"].cpu())
        if self.device.type == "cuda" and own["cuda"] is not None:
            torch.cuda.set_rng_state(own["cuda"].cpu())
        self.noise_rng.set_state(rng["noise"].to(self.noise_rng.get_state().device))
        self.selection.rng.set_state(rng["heldout"].cpu())
        self.selection.load_state_dict(ckpt["selection"])
        self.history = json.loads(ckpt["history"])
        self.step = int(ckpt["step"])
