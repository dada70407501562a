"""THE loop: data-free distillation of a teacher into a budgeted student.

Read top to bottom: set-up (teacher, student, generator, method, optimisers,
resume), one `for step` loop of rounds (g generator updates on one batch, which
the method may store; k student updates on batches the method draws;
evaluation, selection, checkpoint), then the final evaluation, ONNX export and
report. Methods only say what is minimised and what is stored
(compressor.methods); every other decision lives here.

Under torchrun the same loop runs on every rank (compressor.distributed): one
global batch split across ranks, the student under DistributedDataParallel,
the generator's gradients averaged, whole-batch terms on the global batch, and
only rank 0 evaluating and writing files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from compressor import distributed
from compressor.batch_size import choose_batch_size
from compressor.compile import compile_steps
from compressor.cuda_graphs import graph_steps
from compressor.config import OptimizerConfig, RunConfig
from compressor.data import PRESETS, IMAGENET_MEAN, IMAGENET_STD, LabelledData, Split, load_dataset, reported_split_indices, stratified_subset
from compressor.errors import CompressorError
from compressor.evaluate import (confusion_matrix, evaluate_splits, predict_logits, prepare_eval_images,
                                 teacher_agreement)
from compressor.generator import Generator
from compressor.methods import SynthBatch, create_method
from compressor.model_stats import ModelProfile, count_macs, profile_model
from compressor.models import get_entry, list_models as get_registered_names
from compressor.students import StudentPlan, named_student, plan_student
from compressor.teachers import LoadedTeacher, load_teacher


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was written and the run can be resumed."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; continue with: python -m compressor --resume {run_dir}")
        self.step = step


class ChecksFailed(Exception):
    """A check after training failed (an export did not match PyTorch): the student, its checkpoints and the
    report are written, and say what failed; the run still ends in an error."""

    def __init__(self, reason: str, run_dir: Path) -> None:
        super().__init__(f"{reason}; the trained student is kept: {run_dir / 'student.pt'}, "
                         f"{run_dir / 'checkpoints' / 'best.pt'} and {run_dir / 'report.md'}")
        self.run_dir = run_dir


@dataclass
class RunResult:
    run_dir: Path
    report: dict
    finished: bool = True
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- set-up helpers


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


def default_input(arch: str, dataset: str | None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) when the user gives none: the dataset's preset, else the architecture's home
    (224 px and ImageNet statistics for torchvision models, 32 px CIFAR for the rest)."""
    preset = PRESETS.get(dataset or "")
    if preset is None and arch == "small_cnn":
        preset = PRESETS["digits"]
    if preset:
        return preset.input_size, preset.mean, preset.std
    if arch in get_registered_names() and get_entry(arch).family == "torchvision":
        return 224, IMAGENET_MEAN, IMAGENET_STD
    return 32, PRESETS["cifar10"].mean, PRESETS["cifar10"].std


def resolve_teacher(cfg: RunConfig) -> LoadedTeacher:
    """Load the teacher and write what was inferred (arch, classes, input) back into the config."""
    teacher = load_teacher(cfg.teacher.path, cfg.teacher.arch, cfg.teacher.trust_code)
    t = cfg.teacher
    if t.sha256 and t.sha256 != teacher.sha256:
        raise CompressorError(f"teacher {t.path} changed since this run started (sha256 differs); cannot resume")
    default_size, default_mean, default_std = default_input(teacher.arch, cfg.eval.dataset)
    t.arch = teacher.arch
    t.sha256 = teacher.sha256
    t.num_classes = teacher.num_classes
    t.in_channels = teacher.in_channels
    t.input_size = t.input_size or default_size
    t.mean = per_channel(t.mean or default_mean, teacher.in_channels, "mean")
    t.std = per_channel(t.std or default_std, teacher.in_channels, "std")
    return teacher


def per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    if channels == 1:
        return (sum(values) / len(values),)
    raise CompressorError(f"--{what} has {len(values)} values but the teacher takes {channels} channels")


def resolve_student(cfg: RunConfig, teacher: LoadedTeacher) -> tuple[nn.Module, StudentPlan, ModelProfile]:
    """Plan the student on the teacher's measured parameters, multiply-adds and spatial schedule."""
    s, t = cfg.student, cfg.teacher
    try:
        profile = profile_model(teacher.model, (t.in_channels, t.input_size, t.input_size))
    except Exception as exc:  # e.g. an input size the teacher cannot take
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CompressorError(f"the teacher cannot run on {t.in_channels}x{t.input_size}x{t.input_size} inputs: {first}") from None
    if s.name:
        plan = named_student(s.name, profile, t.num_classes, t.in_channels)
        s.ratio = plan.params / profile.params
    else:
        plan = plan_student(s.family, s.ratio, profile, t.num_classes, t.in_channels, s.macs_ratio)
    s.arch, s.spec, s.params = plan.arch, plan.spec, plan.params
    return plan.build(t.num_classes, t.in_channels), plan, profile


def make_optimizer(params, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step for all parameters instead of one per tensor."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True, **fused)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimizerConfig, steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 1e-3)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def load_eval_data(cfg: RunConfig) -> LabelledData | None:
    if not cfg.eval.dataset:
        return None
    t = cfg.teacher
    data = load_dataset(cfg.eval.dataset, cfg.eval.data_dir, cfg.eval.download, t.input_size, t.in_channels)
    n_classes = len(data.class_names)
    if n_classes != t.num_classes:
        raise CompressorError(f"dataset {cfg.eval.dataset} has {n_classes} classes but the teacher predicts {t.num_classes}")
    t.class_names = t.class_names or data.class_names
    return data


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, clip: float | None,
                   sync=None) -> None:
    """`sync(module)`, if given, runs between backward and clipping (the generator's cross-rank average)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync(module)
    if clip:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()


def accumulate_gradients(into: nn.Module, source: nn.Module) -> None:
    """Add `source`'s parameter gradients to `into`'s (same architecture): the first-order meta gradient."""
    for p_into, p_source in zip(into.parameters(), source.parameters()):
        if p_source.grad is None:
            continue
        if p_into.grad is None:
            p_into.grad = p_source.grad.detach().clone()
        else:
            p_into.grad.add_(p_source.grad)


def trial_round(synthesis_loss, distillation_loss, label, student: nn.Module, generator: nn.Module, n: int,
                noise_dim: int, device: torch.device, amp, latent: bool = False) -> None:
    """One generator and one student forward/backward at batch n, for `--batch-size auto` and the `--compile`
    warm-up; every weight, batch-norm statistic and random state it touches is put back, so the run itself is
    unchanged."""
    saved = [copy.deepcopy(m.state_dict()) for m in (student, generator)]
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    try:
        z = torch.randn(n, noise_dim, device=device).requires_grad_(latent)  # optimised noise (latent_lr), as in a round
        student.requires_grad_(False)  # as in a round (and so what --compile traces here is what the loop runs)
        with amp():
            images, loss_g, _ = synthesis_loss(z)
        loss_g.backward()
        student.requires_grad_(True)
        with amp():
            loss_s, _ = distillation_loss(label(SynthBatch(z, images.detach())))  # labelled as a round's batches
        loss_s.backward()
    finally:
        student.requires_grad_(True)
        for m, state in zip((student, generator), saved):
            m.load_state_dict(state)
            m.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], device)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically, so a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def host_copy(obj):
    """A checkpoint state with every tensor copied to host memory, so the loop may go on changing its own."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written by a background thread: the loop waits for the copy to host memory, not for the
    disk (a GPU run's pool alone can be 2 GiB). One write at a time; `wait()` before anything reads the files
    or the run ends, and a failed write is raised there."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def save(self, paths: list[Path], state: dict) -> None:
        self.wait()
        snapshot = host_copy(state)
        self.thread = threading.Thread(target=self._write, args=(paths, snapshot), name="checkpoint-writer")
        self.thread.start()

    def _write(self, paths: list[Path], snapshot: dict) -> None:
        try:
            for path in paths:
                save_checkpoint(path, snapshot)
        except BaseException as exc:  # raised in the loop's thread by wait()
            self.error = exc

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise CompressorError(f"could not write a checkpoint: {error}") from error


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop records past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------- the run


def run(cfg: RunConfig, *, resume: bool = False, stop_at_step: int | None = None, quiet: bool = False) -> RunResult:
    """Distill, evaluate, export and report. `stop_at_step` checkpoints and returns early (resume continues)."""
    started = time.time()
    world = distributed.from_environment()  # a world of one without torchrun
    rank, is_main = world.rank, world.is_main
    run_dir = Path(cfg.out_dir)
    ckpt_dir = run_dir / "checkpoints"
    # Each rank's own scratch (its copy of the synthetic pool); rank 0's is the run folder itself.
    work_dir = run_dir if is_main else run_dir / "ranks" / str(rank)
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / ".write_test").touch()
        (work_dir / ".write_test").unlink()
    except OSError as exc:
        raise CompressorError(f"cannot write to output folder {run_dir}: {exc.strerror or exc}") from None
    device = distributed.start(world, resolve_device(cfg.device))
    use_amp = cfg.amp and device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    # Teacher, evaluation data, student, generator, method; seeded so that a run repeats exactly. One seed for
    # the weights (every rank builds the same models), then each rank's own stream (pool draws, crops).
    torch.manual_seed(cfg.seed)
    teacher_info = resolve_teacher(cfg)
    data = load_eval_data(cfg)
    student, plan, teacher_profile = resolve_student(cfg, teacher_info)
    t = cfg.teacher
    t.class_names = t.class_names or [str(i) for i in range(t.num_classes)]
    input_shape = (t.in_channels, t.input_size, t.input_size)
    teacher = teacher_info.model.to(device).eval()
    student = student.to(device)
    generator = Generator(cfg.generator.noise_dim, t.in_channels, t.input_size, t.mean, t.std, cfg.generator.width).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels once
        for m in (teacher, student, generator):
            m.to(memory_format=torch.channels_last)
    distributed.broadcast_module(student)
    distributed.broadcast_module(generator)
    torch.manual_seed(cfg.seed + rank)
    # The synthesis noise: one global draw that every rank makes alike and takes its own slice of, so that the
    # synthesis batch, and the objective, are the same whatever the number of ranks.
    noise_rng = torch.Generator(device=device).manual_seed(cfg.seed + 20_000)
    method = create_method(cfg.method.name, teacher, student, generator, cfg.method, work_dir)
    g_steps, k_steps = cfg.method.round
    for warning in method.warnings():
        if is_main:
            tqdm.write(f"warning: {warning}")

    # With a meta-generator a round optimises a copy (one module reused, so --compile traces it once).
    meta = cfg.method.generator_start == "meta"
    round_generator = copy.deepcopy(generator) if meta else generator

    # The two forward passes a round repeats: what --compile hands to torch.compile.
    def synthesis_loss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images = round_generator(z)
        loss, logs = method.generator_loss(SynthBatch(z, images))
        return images, loss, logs

    def distillation_loss(batch: SynthBatch) -> tuple[torch.Tensor, dict]:
        return method.student_loss(batch)

    def trial(steps: tuple, n: int) -> None:
        trial_round(*steps, method.label, student, round_generator, n, cfg.generator.noise_dim, device, amp,
                    latent=cfg.method.latent_lr > 0)

    batch_choice = None
    if cfg.batch_size == "auto":  # resolved once; config.json keeps the number, so a resume uses the same
        with distributed.local_only():  # each rank times its own share; rank 0's choice is everyone's
            batch_choice = choose_batch_size(lambda n: trial((synthesis_loss, distillation_loss), n), device)
        batch_choice = distributed.broadcast_object(batch_choice)
        cfg.batch_size = batch_choice.batch_size * world.size  # --batch-size is the global batch
        if is_main and not quiet:
            print(f"batch size {cfg.batch_size} (auto: {batch_choice.reason}"
                  f"{f'; {batch_choice.batch_size} on each of {world.size} ranks' if world.distributed else ''})")
    if cfg.batch_size % world.size:
        raise CompressorError(f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly among "
                              f"the {world.size} ranks")
    local_batch = cfg.batch_size // world.size
    compile_note = None
    if cfg.compile:
        (synthesis_loss, distillation_loss), compile_note = compile_steps(
            (synthesis_loss, distillation_loss), cfg.compile, lambda steps: trial(steps, local_batch))
        if is_main and not quiet:
            print(compile_note)
    graphs_note = None
    if cfg.cuda_graphs:  # both steps' forward and backward replayed as CUDA graphs, where they can be
        if world.distributed:
            graphs_note = "CUDA graphs are not used under torchrun (DDP's gradient hooks): both steps run eagerly"
        else:
            own = torch.Generator(device=device).manual_seed(cfg.seed)  # the run's random streams stay as they are
            sample_z = torch.randn(local_batch, cfg.generator.noise_dim, device=device, generator=own)
            sample_images = torch.randn(local_batch, *input_shape, device=device, generator=own)
            graphs = graph_steps(synthesis_loss, round_generator, student, sample_z.requires_grad_(cfg.method.latent_lr > 0),
                                 sample_images, use_amp)
            synthesis_loss, graphs_note = graphs.synthesis_loss, graphs.note
            if graphs.training_student is not None:
                method.training_student = graphs.training_student
        if is_main and not quiet:
            print(graphs_note)
    if world.distributed:  # the student's step runs through DDP, which averages its gradients across ranks
        method.training_student = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    devices = distributed.gather_objects(device_name(device))
    teacher_params, student_params = teacher_profile.params, plan.params
    teacher_macs, student_macs = teacher_profile.macs, count_macs(student, input_shape)
    if is_main and not quiet:
        print(
            f"teacher {t.arch}: {teacher_params:,} params, {teacher_macs / 1e6:.1f} M MACs | "
            f"student {plan.label}{f' {plan.spec}' if plan.spec else ''}: {student_params:,} params ({100 * student_params / teacher_params:.2f} %), "
            f"{student_macs / 1e6:.1f} M MACs ({100 * student_macs / teacher_macs:.2f} %) | {cfg.method.name} on "
            f"{describe_devices(devices)}"
        )

    opt_s = make_optimizer(student.parameters(), cfg.student_optim, device)
    opt_g = make_optimizer(generator.parameters(), cfg.generator_optim, device)
    sched_s = make_schedule(opt_s, cfg.student_optim, cfg.steps)
    sched_g = make_schedule(opt_g, cfg.generator_optim, cfg.steps)

    # Selection data: a held-out pool of synthetic images (data-free) or an explicit validation split.
    split_indices = reported_split_indices(data.test.labels) if data else {}
    val_images = val_labels = None
    if cfg.eval.select_on == "val":
        if data is None or data.train is None:
            raise CompressorError("--select-on val needs a dataset with a train split to hold a validation subset out of")
        idx = stratified_subset(data.train.labels, min(1.0, 1000 / len(data.train.labels)), seed=1)
        val = prepare_eval_images(Split(data.train.images[idx], data.train.labels[idx]), t.mean, t.std, device)
        val_images, val_labels = val.images, val.labels
    elif cfg.eval.select_on != "synthetic":
        raise CompressorError(f"--select-on must be 'synthetic' or 'val', not {cfg.eval.select_on!r}")
    heldout_rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 10_000)
    heldout_images = torch.empty(0, *input_shape)
    heldout_labels = torch.empty(0, dtype=torch.long)
    best_state: dict | None = None
    best_score, best_step = -1.0, 0
    history: list[dict] = []
    start_step = 0

    if resume:
        ckpt = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=True)
        student.load_state_dict(ckpt["student"])
        generator.load_state_dict(ckpt["generator"])
        opt_s.load_state_dict(ckpt["opt_s"])
        opt_g.load_state_dict(ckpt["opt_g"])
        sched_s.load_state_dict(ckpt["sched_s"])
        sched_g.load_state_dict(ckpt["sched_g"])
        method.load_state_dict(ckpt["method"])
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != world.size:
            raise CompressorError(f"this run was checkpointed by {saved_world} process(es); resume it with the same "
                                  f"number (torchrun --nproc-per-node/--nnodes), not {world.size}")
        own = ckpt["rng"]["ranks"][rank] if "ranks" in ckpt["rng"] else ckpt["rng"]  # older checkpoints: one rank
        torch.set_rng_state(own["torch"].cpu())
        if device.type == "cuda" and own["cuda"] is not None:
            torch.cuda.set_rng_state(own["cuda"].cpu())
        if "noise" in ckpt["rng"]:
            noise_rng.set_state(ckpt["rng"]["noise"].to(noise_rng.get_state().device))
        heldout_rng.set_state(ckpt["rng"]["heldout"].cpu())
        sel = ckpt["selection"]
        heldout_images, heldout_labels = sel["heldout_images"].cpu(), sel["heldout_labels"].cpu()
        best_state, best_score, best_step = sel["best_state"], float(sel["best_score"]), int(sel["best_step"])
        history = json.loads(ckpt["history"])
        start_step = int(ckpt["step"])
        if is_main:
            truncate_metrics(run_dir / "metrics.jsonl", start_step)
    elif is_main:
        (run_dir / "metrics.jsonl").write_text("")
    if is_main:
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

    teacher_acc: dict = {}
    teacher_pred: torch.Tensor | None = None  # kept for the teacher's confusion matrix: the teacher never changes
    eval_set = prepare_eval_images(data.test, t.mean, t.std, device) if data is not None and is_main else None
    if eval_set is not None:
        t_top1, t_top5, teacher_pred = evaluate_splits(teacher, eval_set, split_indices, None, None, device)
        teacher_acc = {"top1": t_top1, "top5": t_top5}

    def own_rng_state() -> dict:
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}

    def checkpoint_state(step: int, ranks: list[dict], digests: list[float]) -> dict:
        """What --resume needs; `ranks` holds every rank's random state, gathered (all ranks call it together)."""
        return {
            "step": step,
            "student": student.state_dict(),
            "generator": generator.state_dict(),
            "opt_s": opt_s.state_dict(),
            "opt_g": opt_g.state_dict(),
            "sched_s": sched_s.state_dict(),
            "sched_g": sched_g.state_dict(),
            "method": method.state_dict(),
            "rng": {"ranks": ranks, "noise": noise_rng.get_state(), "heldout": heldout_rng.get_state()},
            "world_size": world.size,
            "student_digests": digests,  # one per rank: equal, or the ranks' students have diverged
            "selection": {
                "heldout_images": heldout_images,
                "heldout_labels": heldout_labels,
                "best_state": best_state,
                "best_score": best_score,
                "best_step": best_step,
            },
            "history": json.dumps(history),
        }

    def noise() -> torch.Tensor:
        """This rank's slice of one global draw of noise (the same draw on every rank)."""
        z = torch.randn(cfg.batch_size, cfg.generator.noise_dim, device=device, generator=noise_rng)
        return distributed.local_slice(z)

    def gathered_state(step: int) -> dict | None:
        """The checkpoint, with every rank's random state and student digest; every rank must call it together,
        and only rank 0, which writes it, gets it."""
        ranks = distributed.gather_objects(host_copy(own_rng_state()))
        digests = distributed.gather_objects(distributed.digest(student))
        if len(set(digests)) > 1:
            raise CompressorError(f"the ranks' students have diverged at step {step} (digests {digests}); "
                                  "this is a bug, please report it")
        return checkpoint_state(step, ranks, digests) if is_main else None

    # ------------------------------------------------------------ the loop
    bar = tqdm(total=cfg.steps, initial=start_step, disable=quiet or not is_main, dynamic_ncols=True, desc="distill")
    last_eval_acc: float | None = None
    first_diversity: float | None = None
    step = start_step
    checkpointed_step = start_step  # the step of the last checkpoint this run wrote or resumed from
    synth_time, synthesised = 0.0, 0  # this session's training time and images drawn from the generator
    # Losses stay tensors until evaluation time: reading one (.item()) makes the host wait for the GPU.
    pending: list[tuple[dict, dict[str, torch.Tensor]]] = []

    def flush_metrics() -> None:
        """Write the buffered steps' records (and warn of collapse), reading their losses in one go."""
        nonlocal first_diversity, last_flush
        last_flush = time.time()
        for record, logs in pending:
            values = {k: round(v.item(), 6) for k, v in logs.items()}
            if "diversity" in values:  # collapse: every image alike; say so instead of silently training on it
                first_diversity = first_diversity or values["diversity"]
                if values["diversity"] < 0.02 * first_diversity and is_main:
                    tqdm.write(f"warning: generator collapse suspected at step {record['step']} "
                               f"(batch diversity {values['diversity']:.4f})")
            if is_main:
                append_jsonl(run_dir / "metrics.jsonl", {"step": record["step"], **values, **{k: v for k, v in record.items() if k != "step"}})
        if pending:
            last = {k: round(v.item(), 3) for k, v in pending[-1][1].items() if k in ("s_loss", "g_bn")}
            bar.set_postfix(**last, **({"acc": f"{last_eval_acc:.3f}"} if last_eval_acc is not None else {}))
        pending.clear()

    writer = CheckpointWriter()
    loop_started = last_flush = time.time()
    try:
        for step in range(start_step, cfg.steps):
            if stop_at_step is not None and step >= stop_at_step:
                break
            logs: dict[str, torch.Tensor] = {}
            tic = time.time()

            # 1. Synthesis: g generator updates on one batch of noise (from a fresh generator every
            #    `generator_reset_every` rounds, if the method asks for it); the method stores the batch it ended with.
            every = cfg.method.generator_reset_every
            if every and step % every == 0 and step > 0:
                for m in generator.modules():
                    if m is not generator and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                opt_g.state.clear()
            #    A meta round starts from a copy of the shared generator, whose own optimiser steps once at the
            #    end on the copy's gradients summed over the round (Fast's first-order meta update).
            student.requires_grad_(False)
            round_generator.train()
            z = noise()
            if meta:
                round_generator.load_state_dict(generator.state_dict())
                opt_round = make_optimizer(round_generator.parameters(), cfg.generator_optim, device)  # fresh per round
                opt_g.zero_grad(set_to_none=True)
            opt_z = torch.optim.Adam([z.requires_grad_()], lr=cfg.method.latent_lr, betas=(0.5, 0.999)) if cfg.method.latent_lr else None
            for _ in range(g_steps):
                with amp():
                    images, loss_g, logs_g = synthesis_loss(z)  # generator(z), then the method's generator loss
                if opt_z is not None:
                    opt_z.zero_grad(set_to_none=True)
                if meta:
                    optimizer_step(opt_round, loss_g, round_generator, cfg.grad_clip, distributed.average_gradients)
                    accumulate_gradients(generator, round_generator)
                else:
                    optimizer_step(opt_g, loss_g, generator, cfg.grad_clip, distributed.average_gradients)
                if opt_z is not None:
                    opt_z.step()
                synthesised += len(z) * world.size
                logs.update(logs_g)
            if meta:
                opt_g.step()
            method.store(distributed.all_gather(images.detach()))  # every rank's pool holds the global batch
            student.requires_grad_(True)

            # 2. Student: k updates, each on a batch the method draws (its pool, or fresh from the generator).
            student.train()
            for _ in range(k_steps):
                with amp():
                    batch = method.student_batch(local_batch)  # this rank's share of the global batch
                    loss_s, logs_s = distillation_loss(batch)  # the method's student loss (through DDP on ranks)
                optimizer_step(opt_s, loss_s, student, cfg.grad_clip)
                synthesised += batch.synthesised * world.size
                logs.update(logs_s)
            distributed.broadcast_module(student, buffers_only=True)  # every rank: the same student, buffers too
            sched_s.step()
            sched_g.step()
            done = step + 1
            evaluates = done % cfg.eval.eval_every == 0 or done == cfg.steps
            if evaluates and device.type == "cuda":
                torch.cuda.synchronize(device)  # the round's queued kernels are training time, not evaluation's
            synth_time += time.time() - tic

            record = {"step": done, "lr": sched_s.get_last_lr()[0]}
            pending.append((record, logs))

            # 3. Evaluation, selection and checkpoint, every eval_every steps and at the end (rank 0 only).
            if evaluates and is_main:
                if cfg.eval.select_on == "val":
                    preds = predict_logits(student, val_images, device).argmax(1)
                    score = (preds == val_labels).float().mean().item()
                    best_wins = best_state is None or score >= best_score
                else:
                    round_generator.eval()  # the generator as the last round left it (a meta round's adapted copy)
                    with torch.no_grad():
                        z = torch.randn(cfg.eval.heldout_per_eval, cfg.generator.noise_dim, generator=heldout_rng).to(device)
                        new_images = round_generator(z).float().cpu()
                    round_generator.train()
                    new_labels = predict_logits(teacher, new_images, device).argmax(1)
                    heldout_images = torch.cat([heldout_images, new_images])[-cfg.eval.heldout_max :]
                    heldout_labels = torch.cat([heldout_labels, new_labels])[-cfg.eval.heldout_max :]
                    # Current and best student are compared on the same, grown pool of never-trained-on images.
                    score = teacher_agreement(student, heldout_images, heldout_labels, device)
                    best_wins = best_state is None
                    if not best_wins:
                        incumbent = copy.deepcopy(student)
                        incumbent.load_state_dict(best_state)
                        best_score = teacher_agreement(incumbent, heldout_images, heldout_labels, device)
                        best_wins = score >= best_score
                if best_wins:
                    best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
                    best_score, best_step = score, done
                eval_record = {"step": done, "selection_score": score, "best_step": best_step}
                if data is not None:
                    top1, _, _ = evaluate_splits(student, eval_set, {"full": split_indices["full"]}, None, None, device)
                    last_eval_acc = top1["full"]
                    eval_record["accuracy"] = last_eval_acc
                history.append(eval_record)
                record["eval"] = eval_record
                flush_metrics()
            if evaluates:
                state = gathered_state(done)
                if is_main:
                    writer.save([ckpt_dir / "last.pt", *([ckpt_dir / "best.pt"] if best_step == done else [])], state)
                checkpointed_step = done
            if device.type != "cuda" or time.time() - last_flush > 5:  # a CPU loses nothing by reading at once
                flush_metrics()
            bar.update(1)
            if step == start_step and is_main and not quiet and cfg.steps - done > 0:
                took = time.time() - tic
                tqdm.write(f"first round took {took:.1f} s: about {took * (cfg.steps - done) / 60:.1f} min for the "
                           f"{cfg.steps - done} rounds left, plus evaluation and export")
        else:
            step = cfg.steps
    except KeyboardInterrupt:
        flush_metrics()
        bar.close()
        if is_main:
            writer.wait()
        if not world.distributed:
            save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(step, [own_rng_state()], [distributed.digest(student)]))
        else:  # the ranks may be at different points; gathering now could hang. The last periodic checkpoint stands.
            step = checkpointed_step
        raise Interrupted(step, run_dir) from None
    flush_metrics()
    bar.close()
    writer.wait()
    loop_ended = time.time()
    if step < cfg.steps:  # stopped early on purpose: leave a resumable checkpoint
        state = gathered_state(step)
        if is_main:
            save_checkpoint(ckpt_dir / "last.pt", state)
        return RunResult(run_dir, {}, finished=False, history=history)
    if not is_main:  # rank 0 alone evaluates, exports and reports
        return RunResult(run_dir, {}, history=history)

    # ---------------------------------------------------------------- final evaluation, export, report
    student.load_state_dict(best_state)
    student.eval()
    wall = time.time() - started
    student_acc: dict = {}
    confusions = {}
    if data is not None:
        s_top1, s_top5, s_pred = evaluate_splits(student, eval_set, split_indices, None, None, device)
        student_acc = {"top1": s_top1, "top5": s_top5}
        confusions = {
            "student": confusion_matrix(s_pred, data.test.labels, t.num_classes),
            "teacher": confusion_matrix(teacher_pred, data.test.labels, t.num_classes),
        }

    round_generator.eval()
    with torch.no_grad():
        sample_z = torch.randn(64, cfg.generator.noise_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        samples = round_generator(sample_z).float()
        sample_pixels = round_generator.to_pixels(samples).clamp(0, 1).cpu()
        sample_classes = predict_logits(teacher, samples.cpu(), device).argmax(1)

    artifacts: dict[str, str | None] = {"onnx": None, "report_md": "report.md"}
    deployment: dict | None = None
    failed_check: str | None = None  # a check after training fails the run, but never loses the student
    if cfg.export_onnx and is_main:
        from compressor.export_step import export_run

        try:
            deployment = export_run(
                student, teacher, samples.cpu(), run_dir, cfg,
                student_acc.get("top1", {}).get("full") if student_acc else None,
                teacher_acc.get("top1", {}).get("full") if teacher_acc else None,
                data.test if data is not None else None,
            )
            artifacts.update({"onnx": "student.onnx", "teacher_onnx": "teacher.onnx", "fp16": "student.fp16.onnx",
                              "int8": "student.int8.onnx"})
        except CompressorError as exc:
            failed_check = str(exc)
            deployment = {"error": failed_check}
        artifacts.update({"torchscript": "student.pt", "safetensors": "student.safetensors"})

    report = {
        "teacher": {
            "arch": t.arch,
            "params": teacher_params,
            "macs": teacher_macs,
            "accuracy": _accuracy_block(teacher_acc),
            "top5": _top5_block(teacher_acc),
            "sha256": t.sha256,
        },
        "student": {
            "arch": plan.label,
            "spec": plan.spec,
            "params": student_params,
            "macs": student_macs,
            "accuracy": _accuracy_block(student_acc),
            "top5": _top5_block(student_acc),
        },
        "ratio": student_params / teacher_params,
        "requested_ratio": cfg.student.ratio,
        "macs_ratio": cfg.student.macs_ratio or cfg.student.ratio,
        "student_macs_ratio": student_macs / teacher_macs,
        "spatial_schedule": list(teacher_profile.schedule.sizes),
        "method": cfg.method.name,
        "preset": cfg.preset,
        "steps": cfg.steps,
        "student_updates": cfg.steps * k_steps,
        "round": {"generator_steps": g_steps, "student_steps": k_steps},
        "batch_size": cfg.batch_size,
        "batch_size_auto": batch_choice.model_dump() if batch_choice else None,
        "compile": compile_note,
        "cuda_graphs": graphs_note,
        "images_synthesised": synthesised if start_step == 0 else None,
        "images_per_second": synthesised / max(synth_time, 1e-9) if start_step == 0 else None,
        "wall_seconds": wall,
        # train: the rounds' own work; the rest of the loop's time is evaluations, selection and checkpoints
        "timing": {"setup_seconds": loop_started - started, "loop_seconds": loop_ended - loop_started,
                   "train_seconds": synth_time, "finish_seconds": time.time() - loop_ended},
        "device": describe_devices(devices),
        "world_size": world.size,  # processes (torchrun ranks); batch_size is the global batch across them
        "dataset": cfg.eval.dataset,
        "selection": {
            "criterion": "teacher agreement on held-out synthetic images" if cfg.eval.select_on == "synthetic"
            else "accuracy on a validation subset of the train split",
            "best_step": best_step,
            "score": best_score,
        },
        "deployment": deployment,
        "history": history,
        "artifacts": artifacts,
    }
    if is_main:
        from compressor.report import write_report

        write_report(run_dir, report, confusions, sample_pixels, sample_classes, t.class_names)
    if failed_check:
        raise ChecksFailed(failed_check, run_dir)
    return RunResult(run_dir, report, history=history)


def _accuracy_block(acc: dict) -> dict:
    top1 = acc.get("top1") or {}
    return {name: top1.get(name) for name in ("full", "test_10", "test_20")}


def _top5_block(acc: dict) -> dict | None:
    top5 = acc.get("top5")
    return {name: top5.get(name) for name in ("full", "test_10", "test_20")} if top5 else None
