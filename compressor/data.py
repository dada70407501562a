"""Evaluation data: only ever used to *report* accuracy (or, with --select-on val, to select).

Sources: cifar10 / cifar100 through torchvision (downloaded only with
--download), an image folder (class sub-folders, optionally under train/ and
test/, or a .tar.gz of one, read without unpacking), an .npz of images and labels, and scikit-learn's
bundled handwritten digits. Images are kept as float tensors in [0, 1] at the
teacher's input size; normalisation is applied by whoever feeds a model.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from compressor.atomic import save_atomically
from compressor.config import NAMED_DATASETS
from compressor.errors import CompressorError
from compressor.image_archive import ArchiveFolder, Parts

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = (0.3,)
DIGITS_STD = (0.4,)
DIGITS_SIZE = 16
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class DatasetPreset:
    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


PRESETS: dict[str, DatasetPreset] = {
    "cifar10": DatasetPreset(32, 3, CIFAR_MEAN, CIFAR_STD),
    "cifar100": DatasetPreset(32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": DatasetPreset(DIGITS_SIZE, 1, DIGITS_MEAN, DIGITS_STD),
}


@dataclass
class Split:
    images: torch.Tensor  # float32 in [0, 1], N x C x H x W
    labels: torch.Tensor  # int64, N


@dataclass
class LabelledData:
    name: str
    class_names: list[str]
    train: Split | None
    test: Split


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded, per-class subset. Fractions nest: the 10 % split is inside the 20 % split."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return torch.sort(torch.cat(keep)).values


REPORTED_SPLITS = ("full", "test_20", "test_10")


def reported_split_indices(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three reported splits as indices into the test set: all of it and the seed's fixed 20 % and 10 % subsets."""
    return {
        "full": torch.arange(len(labels)),
        "test_20": stratified_subset(labels, 0.2),
        "test_10": stratified_subset(labels, 0.1),
    }


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    raise CompressorError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


def _from_uint8_hwc(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).float().div(255.0)


def load_digits(size: int = DIGITS_SIZE) -> LabelledData:
    """scikit-learn's 1,797 bundled 8x8 digits, upsampled; a fixed stratified 75 / 25 train / test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = _resize(images, size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    test_idx = stratified_subset(labels, 0.25, seed=0)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[test_idx] = False
    return LabelledData(
        "digits",
        [str(i) for i in range(10)],
        Split(images[mask], labels[mask]),
        Split(images[test_idx], labels[test_idx]),
    )


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # torchvision's layout


def cifar_available(name: str, data_dir: str | None) -> bool:
    """Whether a copy of CIFAR-10/100 is where `--dataset NAME` would look, without reading it."""
    return (Path(data_dir or "data") / CIFAR_FOLDERS[name]).is_dir()


def _load_cifar(name: str, data_dir: str | None, download: bool) -> LabelledData:
    import torchvision

    root = Path(data_dir or "data")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    splits = {}
    try:
        for train in (True, False):
            ds = cls(root=str(root), train=train, download=download)
            splits[train] = (Split(_from_uint8_hwc(ds.data), torch.tensor(ds.targets)), ds.classes)
    except RuntimeError:
        raise CompressorError(
            f"{name} not found under {root} (expected torchvision's layout); pass --data-dir DIR, or --download"
        ) from None
    return LabelledData(name, list(splits[False][1]), splits[True][0], splits[False][0])


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
Opener = Callable[[], BinaryIO | Path]  # an image's bytes: a file on disk, or an archive member in memory


def _decode_images(sources: list[tuple[str, Opener]], labels: list[int], size: int, channels: int) -> Split:
    """(name, opener) pairs decoded in order at `size` x `size`; a file that is no image is named in the error."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    images = []
    for name, opener in sources:
        try:
            with Image.open(opener()) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise CompressorError(f"{name} is not a readable image ({exc})") from None
    return Split(_from_uint8_hwc(np.stack(images)), torch.tensor(labels))


def _decode_classes(where: str, classes: list[str], images_of: Callable[[str], list[tuple[str, Opener]]], size: int,
                    channels: int) -> tuple[Split, list[str]]:
    """A folder of class sub-folders (on disk or in an archive), labelled in the sub-folders' sorted order."""
    if not classes:
        raise CompressorError(f"{where} has no class sub-folders")
    sources, labels = [], []
    for label, cls in enumerate(classes):
        found = images_of(cls)
        sources += found
        labels += [label] * len(found)
    if not sources:
        raise CompressorError(f"{where} holds no images")
    return _decode_images(sources, labels, size, channels), classes


def _decode_folder(folder: Path, size: int, channels: int) -> tuple[Split, list[str]]:
    def images_of(cls: str) -> list[tuple[str, Opener]]:
        paths = [p for p in sorted((folder / cls).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        return [(str(p), lambda p=p: p) for p in paths]

    return _decode_classes(str(folder), sorted(p.name for p in folder.iterdir() if p.is_dir()), images_of, size, channels)


def _decode_archive_folder(folder: ArchiveFolder, parts: Parts, size: int, channels: int) -> tuple[Split, list[str]]:
    def images_of(cls: str) -> list[tuple[str, Opener]]:
        members = [(*parts, cls, name) for name in folder.image_names((*parts, cls))]
        return [(folder.name_of(m), lambda m=m: folder.open(m)) for m in members]

    return _decode_classes(folder.name_of(parts), folder.subfolders(parts), images_of, size, channels)


def cache_dir() -> Path:
    """Decoded datasets (and verified teacher ONNX files); COMPRESSOR_CACHE moves it (tests point it at a temporary folder)."""
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def _cached_folder_split(folder: Path, size: int, channels: int) -> tuple[Split, list[str]]:
    """Decoding 10k JPEGs takes seconds; keep a decoded copy in the cache folder."""
    key = hashlib.sha1(f"{folder.resolve()}:{size}:{channels}".encode()).hexdigest()[:12]
    cache = cache_dir() / f"folder-{key}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return _from_blob(blob), list(blob["classes"])
    split, classes = _decode_folder(folder, size, channels)
    _keep(cache, {**_to_blob(split), "classes": classes})
    return split, classes


def _to_blob(split: Split) -> dict[str, torch.Tensor]:
    return {"images": (split.images * 255).round().to(torch.uint8), "labels": split.labels}


def _from_blob(blob: dict) -> Split:
    return Split(blob["images"].float().div(255), blob["labels"])


def _keep(cache: Path, blob: dict) -> None:
    """A decoded copy in the cache folder; a read-only or full cache only costs the next run the decoding."""
    with contextlib.suppress(OSError, RuntimeError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(blob, cache)


def _splits(has_folder: Callable[[str], bool], decode: Callable[[str | None], tuple[Split, list[str]]]
            ) -> tuple[Split | None, Split, list[str]]:
    """(train, test, classes): test/ and train/ where the folder has a test/, else the folder itself as the test
    split. The same layout on disk and in an archive; `decode(None)` decodes the folder itself."""
    if not has_folder("test"):
        test, classes = decode(None)
        return None, test, classes
    test, classes = decode("test")
    return (decode("train")[0] if has_folder("train") else None), test, classes


def _load_folder(path: Path, size: int, channels: int) -> LabelledData:
    train, test, classes = _splits(lambda name: (path / name).is_dir(),
                                   lambda name: _cached_folder_split(path / name if name else path, size, channels))
    return LabelledData(path.name, classes, train, test)


def _load_archive(archive: Path, size: int, channels: int) -> LabelledData:
    """An image folder in a tar archive, decoded once: later runs read the decoded copy in the cache folder."""
    key = hashlib.sha1(f"{archive.resolve()}:{archive.stat().st_size}:{size}:{channels}".encode()).hexdigest()[:12]
    cache = cache_dir() / f"archive-{key}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        train = _from_blob(blob["train"]) if blob["train"] is not None else None
        return LabelledData(blob["name"], list(blob["classes"]), train, _from_blob(blob["test"]))
    folder = ArchiveFolder.read(archive, IMAGE_SUFFIXES)
    root = folder.root()
    train, test, classes = _splits(lambda name: folder.is_folder((*root, name)),
                                   lambda name: _decode_archive_folder(folder, (*root, name) if name else root, size, channels))
    name = root[-1] if root else archive.name.split(".")[0]
    _keep(cache, {"name": name, "classes": classes, "test": _to_blob(test),
                  "train": _to_blob(train) if train is not None else None})
    return LabelledData(name, classes, train, test)


def _load_npz(path: Path, size: int, channels: int) -> LabelledData:
    try:
        blob = np.load(path, allow_pickle=False)
        images, labels = blob["images"], blob["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise CompressorError(f"{path} is not an .npz with 'images' and 'labels' arrays ({exc})") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise CompressorError(f"{path}: 'images' must be N x H x W [x C] or N x C x H x W")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    t = _from_uint8_hwc(images) if images.dtype == np.uint8 else torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    names = [str(c) for c in blob["class_names"]] if "class_names" in blob else [str(i) for i in range(int(labels_t.max()) + 1)]
    return LabelledData(path.stem, names, None, Split(t, labels_t))


def load_dataset(name: str, data_dir: str | None, download: bool, size: int, channels: int) -> LabelledData:
    if name == "digits":
        data = load_digits(size)
    elif name in ("cifar10", "cifar100"):
        data = _load_cifar(name, data_dir, download)
    else:
        path = Path(name)
        if path.suffix == ".npz" and path.is_file():
            data = _load_npz(path, size, channels)
        elif path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            data = _load_archive(path, size, channels)
        elif path.is_dir():
            data = _load_folder(path, size, channels)
        else:
            raise CompressorError(
                f"unknown dataset {name!r}: use {', '.join(NAMED_DATASETS)}, an image folder or an .npz file"
            )
    for split in (data.train, data.test):
        if split is not None:
            split.images = _match_channels(_resize(split.images, size), channels)
    return data
