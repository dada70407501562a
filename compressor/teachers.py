"""Safe teacher loading and architecture detection.

Nothing in a checkpoint is ever unpickled as code: safetensors files are data by
construction, state dicts go through ``torch.load(weights_only=True)``, and a
pickled whole module is refused before any of its code can run. A ``torch.export``
program (``.pt2``) is a graph of PyTorch operators and raw weights; it is loaded
with every unpickling restricted to tensors. TorchScript archives are code (their
``__setstate__`` and ``forward`` run as they load and run), so they are loaded
only when the caller trusts the file (``--trust-code``).

A program's weights keep their module names, so a program of a registry
architecture is rebuilt as that architecture, BatchNorm layers and all (what the
batch-norm statistics term hooks). Any other program is distilled from as its
graph, where BatchNorm is an operator, not a layer: the run says the term is off.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.models import create_model, get_entry, list_models

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "teacher")


@dataclass
class LoadedTeacher:
    model: nn.Module
    arch: str
    num_classes: int
    in_channels: int
    sha256: str
    source: str  # "state_dict", "program" (torch.export .pt2) or "torchscript"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())


def _is_program(path: Path) -> bool:
    """A torch.export archive (torch.export.save): a zip that declares its archive format."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "archive_format" or n.endswith("/archive_format") for n in zf.namelist())


def _read_program(path: Path) -> tuple[dict[str, torch.Tensor], nn.Module, str]:
    from export.program import ProgramError, load_program, program_module

    try:
        program, _ = load_program(path, untrusted=True)
    except ProgramError as exc:
        raise CompressorError(str(exc)) from None
    return {k: v.detach() for k, v in program.state_dict.items()}, program_module(program), "program"


def _unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or one under a common wrapper key, with or without DataParallel's prefix."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key])
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module."):]: v for k, v in tensors.items()}
            return tensors
    raise CompressorError(
        "checkpoint holds no state dict (expected tensors, optionally under 'state_dict', 'model' or 'net')"
    )


def _is_safetensors(path: Path) -> bool:
    """By name, or by content: an 8-byte little-endian header length, then a JSON header that opens with '{'."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def check_archive_size(path: Path, limit: int) -> None:
    """Refuse a zip (torch.save's format) whose members would inflate past `limit` bytes, from its central
    directory alone: a 1 MB upload can otherwise unpack to gigabytes inside torch.load."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise CompressorError(f"unreadable checkpoint archive: {exc}") from None
    if total > limit:
        raise CompressorError(f"the checkpoint archive unpacks to {total:,} bytes, over the limit of {limit:,}")


def _read_checkpoint(path: Path, trust_code: bool = False) -> tuple[dict[str, torch.Tensor], nn.Module | None, str]:
    """(the weights, the file's own runnable model where it carries one, the source: see LoadedTeacher)."""
    if not path.is_file():
        raise CompressorError(f"teacher checkpoint not found: {path}")
    if _is_safetensors(path):  # data only by construction: nothing in it can run
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap_state_dict(load_file(str(path))), None, "state_dict"
        except (SafetensorError, ValueError, OSError) as exc:
            raise CompressorError(f"cannot read safetensors file {path}: {exc}") from None
    if _is_program(path):
        return _read_program(path)
    try:
        if _is_torchscript(path):
            if not trust_code:  # refused from its zip directory alone: nothing in it has been read or run
                raise CompressorError(
                    f"{path} is a TorchScript archive: it carries code that runs as it loads (weights_only does not "
                    "apply); pass --trust-code if you trust where it came from, or save a state dict "
                    "(torch.save(model.state_dict(), path)) or safetensors instead"
                )
            with warnings.catch_warnings():  # torch marks TorchScript deprecated; users still ship it
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
            return dict(scripted.state_dict()), scripted, "torchscript"
        with warnings.catch_warnings():  # torch's pickle-protocol chatter is not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CompressorError:
        raise
    except Exception as exc:  # weights_only refuses code; anything else is an unreadable file
        text = str(exc)
        with open(path, "rb") as f:
            raw_pickle = f.read(1) == b"\x80"  # pickle's PROTO opcode: a plain pickle, not torch.save's zip
        if "Unsupported global" in text or "GLOBAL" in text or raw_pickle:
            raise CompressorError(
                f"{path} is a pickled Python object, not a state dict or TorchScript archive; refusing to load it "
                "(save with torch.save(model.state_dict(), path) or torch.jit.save)"
            ) from None
        if "Weights only load failed" in text:
            raise CompressorError(f"{path} is not a PyTorch checkpoint (torch.save state dict) or TorchScript archive") from None
        raise CompressorError(f"cannot read teacher checkpoint {path}: {text.splitlines()[0] if text else exc!r}") from None
    return _unwrap_state_dict(obj), None, "state_dict"


MAX_CLASSES, MAX_IN_CHANNELS = 100_000, 64  # beyond these a checkpoint describes no image classifier we can serve


def _classifier_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(num_classes, in_channels): the last 2-D weight is the classifier, the first 4-D weight the stem."""
    mats = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    convs = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4]
    if not mats:
        raise CompressorError("cannot find a classifier layer (a 2-D weight) in the checkpoint")
    num_classes, in_channels = mats[-1].shape[0], (convs[0].shape[1] if convs else 3)
    if not 1 < num_classes <= MAX_CLASSES or not 0 < in_channels <= MAX_IN_CHANNELS:
        raise CompressorError(f"the checkpoint's classifier has {num_classes:,} classes and {in_channels:,} input "
                              f"channels; a teacher needs 2 to {MAX_CLASSES:,} classes and 1 to {MAX_IN_CHANNELS} channels")
    return num_classes, in_channels


def _registry_model(arch: str, state: dict[str, torch.Tensor], num_classes: int, in_channels: int) -> nn.Module:
    """`arch` built for the checkpoint, once its tensors' shapes are known to fit: the model is first built on
    the meta device, which allocates nothing, because a few bytes of checkpoint (a zero-width classifier of a
    million classes) can otherwise make a gigabyte model before any shape is compared."""
    with torch.device("meta"):
        expected = _shapes(create_model(arch, num_classes=num_classes, in_channels=in_channels).state_dict())
    found = _shapes(state)
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise CompressorError(f"checkpoint does not fit architecture {arch}: {k} has shape {list(found[k])}, "
                              f"the architecture's is {list(expected[k])}")
    return create_model(arch, num_classes=num_classes, in_channels=in_channels)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def infer_arch(state: dict[str, torch.Tensor], num_classes: int, in_channels: int) -> str | None:
    """The first registry architecture whose state-dict keys and shapes equal the checkpoint's."""
    wanted = _shapes(state)
    for name in list_models(inferable_only=True):
        with torch.device("meta"):
            try:
                model = create_model(name, num_classes=num_classes, in_channels=in_channels)
            except Exception:
                continue
        if _shapes(model.state_dict()) == wanted:
            return name
    return None


def _build_custom(spec: str, num_classes: int) -> nn.Module:
    """``package.module:factory``: the user's own code builds the architecture; our loader supplies the weights."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CompressorError(f"cannot import --arch {spec}: {exc}") from None
    try:
        params = inspect.signature(factory).parameters
        model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    except Exception as exc:
        raise CompressorError(f"--arch {spec} failed to build a model: {exc}") from None
    if not isinstance(model, nn.Module):
        raise CompressorError(f"--arch {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_teacher(path: str | Path, arch: str | None = None, trust_code: bool = False) -> LoadedTeacher:
    """`trust_code` allows TorchScript archives, which are code; the service never sets it for an upload."""
    path = Path(path)
    state, runnable, source = _read_checkpoint(path, trust_code)
    num_classes, in_channels = _classifier_shape(state)
    sha = file_sha256(path)
    if arch and ":" in arch:
        model = _build_custom(arch, num_classes)
    elif arch:
        try:
            get_entry(arch)
        except KeyError as exc:
            raise CompressorError(str(exc.args[0])) from None
        model = _registry_model(arch, state, num_classes, in_channels)
    else:
        arch = infer_arch(state, num_classes, in_channels)
        if arch is None:
            if runnable is not None:  # an architecture we don't know, but the program or TorchScript runs itself
                return LoadedTeacher(_frozen(runnable), source, num_classes, in_channels, sha, source)
            raise CompressorError(
                f"cannot recognise the architecture of {path} ({len(state)} tensors, {num_classes} classes); "
                "pass --arch NAME or --arch package.module:factory"
            )
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CompressorError(f"checkpoint does not fit architecture {arch}: {first}") from None
    return LoadedTeacher(_frozen(model), arch, num_classes, in_channels, sha, source)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
