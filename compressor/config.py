"""Every setting of a run, as pydantic models with defaults that work.

The CLI maps flags onto these; each run writes its resolved `RunConfig` to
`config.json`, which is all `--resume` needs to continue exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.errors import CompressorError
from compressor.methods import METHODS
from compressor.students import StudentFamily

# The datasets known by name; a path to an image folder or an .npz file is the other way to give one.
NamedDataset = Literal["digits", "cifar10", "cifar100"]
NAMED_DATASETS: tuple[str, ...] = get_args(NamedDataset)

MethodName = Literal[tuple(METHODS)]  # the method registry's names


MIN_STD, MAX_ABS_MEAN = 1e-6, 1e3  # beyond these the normalised inputs overflow fp16 and INT8 calibration


def _all_positive(values: tuple[float, ...]) -> tuple[float, ...]:
    if any(x < MIN_STD for x in values):
        raise ValueError(f"every std must be at least {MIN_STD:g} (inputs are divided by it)")
    return values


def _all_moderate(values: tuple[float, ...]) -> tuple[float, ...]:
    if any(abs(x) > MAX_ABS_MEAN for x in values):
        raise ValueError(f"every mean must be within ±{MAX_ABS_MEAN:g} (inputs are pixel values in [0, 1])")
    return values


Std = Annotated[tuple[float, ...], AfterValidator(_all_positive)]  # per-channel std: the CLI's and the service's
Mean = Annotated[tuple[float, ...], AfterValidator(_all_moderate)]


class Strict(BaseModel):
    # NaN and infinity are never a setting: they would train nothing, and config.json could not hold them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"]
    lr: float = Field(gt=0)
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class MethodSettings(Strict):
    """What a method minimises and stores, and its round: g generator steps on one batch, then k student steps.

    `dfad` uses only the round (it is the plain min-max on L1, k_g = 1, k_s = 5 as the seed); the rest is the
    default method's. Defaults were chosen on a validation split of CIFAR-10's train/ (benchmarks/RESULTS.md).
    """

    name: MethodName = "default"
    generator_steps: int | None = Field(None, gt=0)  # g per round; None: the method's default_round
    student_steps: int | None = Field(None, gt=0)  # k per round; None: the method's default_round
    bn_weight: float = Field(10.0, ge=0)
    adversarial_weight: float = Field(0.5, ge=0)
    balance_weight: float = Field(1.0, ge=0)
    one_hot_weight: float = Field(0.5, ge=0)
    temperature: float = Field(4.0, gt=0)
    pool_size: int = Field(50_000, ge=1)  # synthetic images kept (uint8, memory-mapped in the run folder)
    # The generator is also pushed away from the images the pool already holds, in the teacher's own feature
    # space (what its last Linear layer receives): a repulsion from the rest of its batch and a bank of the
    # stored images' features (CMI's contrastive idea without its second view), against pools of near-duplicates.
    # 30 was chosen on the validation split (benchmarks/RESULTS.md); 0: off.
    diversity_weight: float = Field(30.0, ge=0)
    diversity_bank: int = Field(4096, ge=1)  # features of the latest stored images the repulsion is measured against
    diversity_temperature: float = Field(0.1, gt=0)
    augment: bool = True  # random crops of the pool's images, in whole pixels
    flip: bool = True
    # The teacher labels a round's k student batches ahead, a chunk of them per forward pass, instead of one
    # forward per step. None: on CUDA only, where a KD step is bound by launching kernels. On a CPU it made a
    # round 30 % slower (benchmarks/RESULTS.md), so there the step labels its own batch, inside --compile's graph.
    label_ahead: bool | None = None

    @property
    def round(self) -> tuple[int, int]:
        """(g, k): generator and student updates per round, the method's defaults where unset."""
        g, k = METHODS[self.name].default_round
        return self.generator_steps or g, self.student_steps or k


class TeacherConfig(Strict):
    path: str
    arch: str | None = None  # None: inferred from the checkpoint and written back here
    sha256: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = Field(None, gt=0)
    mean: Mean | None = None
    std: Std | None = None
    class_names: list[str] | None = None
    trust_code: bool = False  # allow TorchScript archives (code that runs as it loads); never set for uploads


StudentInit = Literal["auto", "random", "teacher"]


class StudentConfig(Strict):
    family: StudentFamily = "auto"  # auto: the teacher's kind (depthwise or residual)
    ratio: float = 0.1
    macs_ratio: float | None = None  # student / teacher multiply-adds at the teacher's input size; None: = ratio
    # A registered architecture (e.g. wrn_16_1) to use as it is instead of a planned one: how published pairs
    # are reproduced. The budgets are then not searched; ratio is written back as the student's measured one.
    name: str | None = None
    arch: str | None = None  # resolved by the budget search
    spec: dict | None = None  # resolved by the search; given (with arch), the student is built as it is
    params: int | None = None
    # Where the student's weights start. "teacher": a residual student of a post-activation ResNet teacher takes the
    # teacher's strongest channels and blocks (compressor.student_init), and any other pair says why it cannot;
    # "auto" does so where the pair fits and is silent where it does not; "random": always random. A run writes
    # back what it did ("teacher" or "random"), so its config and report say where the student started.
    init: StudentInit = "auto"

    @field_validator("ratio")
    @classmethod
    def _ratio_in_range(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"ratio must be in (0, 1), got {v}")
        return v

    @field_validator("macs_ratio")
    @classmethod
    def _macs_ratio_positive(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v < float("inf")):
            raise ValueError(f"macs_ratio must be a positive number, got {v}")
        return v


class GeneratorConfig(Strict):
    noise_dim: int = Field(100, gt=0)
    width: int = Field(64, gt=0)


class EvalConfig(Strict):
    dataset: str | None = None  # cifar10 | cifar100 | digits | an image folder | a .npz file
    data_dir: str | None = None
    download: bool = False
    eval_every: int = Field(50, gt=0)
    select_on: str = "synthetic"  # or "val": a seeded subset of the dataset's train split
    heldout_per_eval: int = Field(128, gt=0)
    heldout_max: int = Field(2048, gt=0)


def _seed_preset() -> dict:
    """The seed project's DFAD: a student from random weights, Adam 1e-4 for it, 0.7x that for the generator,
    batch 128, noise 100."""
    return {
        "method": MethodSettings(name="dfad"),
        "student": {"init": "random"},
        "student_optim": OptimizerConfig(name="adam", lr=1e-4, schedule="constant"),
        "generator_optim": OptimizerConfig(name="adam", lr=7e-5, schedule="constant"),
        "batch_size": 128,
        "generator": GeneratorConfig(noise_dim=100),
    }


def _paper_preset() -> dict:
    """A GPU schedule of the size the published CIFAR tables use."""
    return {"steps": 8000, "batch_size": 256, "student_optim": OptimizerConfig(name="sgd", lr=0.1, weight_decay=5e-4)}


# The presets by name: what each changes from the defaults (explicit flags win over it). A preset's "student" is
# a partial dict, merged into the student the caller sizes, because the size is never the preset's to choose.
RUN_PRESETS: dict[str, Callable[[], dict]] = {"default": dict, "seed": _seed_preset, "paper": _paper_preset}
PresetName = Literal[tuple(RUN_PRESETS)]


def preset_overrides(preset: str) -> dict:
    if preset not in RUN_PRESETS:
        raise CompressorError(f"unknown preset {preset!r}")
    return RUN_PRESETS[preset]()


class RunConfig(Strict):
    out_dir: str
    preset: PresetName = "default"
    teacher: TeacherConfig
    student: StudentConfig = StudentConfig()
    generator: GeneratorConfig = GeneratorConfig()
    method: MethodSettings = MethodSettings()
    eval: EvalConfig = EvalConfig()
    student_optim: OptimizerConfig = OptimizerConfig(name="sgd", lr=0.1, weight_decay=5e-4)
    generator_optim: OptimizerConfig = OptimizerConfig(name="adam", lr=1e-3, betas=(0.5, 0.999), schedule="constant")
    steps: int = Field(400, gt=0)  # rounds: method.generator_steps generator updates, then method.student_steps student updates
    # "auto" (the default): the largest power of two that still speeds synthesis up, chosen by a timed trial at
    # start (compressor.batch_size). On a CPU that is small (16 for a 224 px ResNet-34 on 2 cores, against
    # 146 s and 9 GB per round at 128); on a GPU it grows until memory or throughput stops it.
    batch_size: int | Literal["auto"] = "auto"
    grad_clip: float | None = Field(5.0, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast, on CUDA only
    # torch.compile backend for the two training steps ("inductor"), or None for eager. Off by default until a
    # GPU measurement shows it pays for its compile time (python -m benchmarks.gpu --compile inductor).
    compile: str | None = None
    # Each synthesis step's and each KD step's forward and backward replayed as CUDA graphs (compressor.cuda_graphs),
    # on one CUDA device; elsewhere the run says so and goes on eagerly. Off until a GPU measurement shows it pays.
    cuda_graphs: bool = False
    export_onnx: bool = True

    @model_validator(mode="after")
    def _one_way_to_speed_the_steps_up(self) -> RunConfig:
        if self.compile and self.cuda_graphs:
            raise ValueError("choose --compile or --cuda-graphs, not both: each takes over the training steps")
        return self

    @field_validator("batch_size")
    @classmethod
    def _batch_at_least_two(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 2:
            raise ValueError(f"batch_size must be at least 2 (batch-norm statistics need a batch), got {v}")
        return v
