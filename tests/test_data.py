import numpy as np
import pytest
import torch
from PIL import Image

from compressor.data import load_dataset, reported_split_indices, stratified_subset
from compressor.errors import CompressorError


def test_reported_splits_are_fixed_stratified_and_nested():
    labels = torch.arange(10).repeat_interleave(100)
    splits = reported_split_indices(labels)
    assert len(splits["full"]) == 1000 and len(splits["test_20"]) == 200 and len(splits["test_10"]) == 100
    for name in ("test_10", "test_20"):
        counts = torch.bincount(labels[splits[name]], minlength=10)
        assert (counts == counts[0]).all()
    assert set(splits["test_10"].tolist()) <= set(splits["test_20"].tolist())
    assert torch.equal(splits["test_10"], reported_split_indices(labels)["test_10"])  # seeded: identical every time
    assert not torch.equal(stratified_subset(labels, 0.1, seed=0), stratified_subset(labels, 0.1, seed=1))


def test_digits_are_upsampled_and_split():
    data = load_dataset("digits", None, False, 16, 1)
    assert data.test.images.shape[1:] == (1, 16, 16) and len(data.class_names) == 10
    assert len(data.train.labels) + len(data.test.labels) == 1797
    assert 0 <= data.test.images.min() and data.test.images.max() <= 1


def test_npz_and_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 20, 20, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(12) % 3, class_names=np.array(["a", "b", "c"]))
    data = load_dataset(str(tmp_path / "d.npz"), None, False, 32, 3)
    assert data.test.images.shape == (12, 3, 32, 32) and data.class_names == ["a", "b", "c"]
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(images[i]).save(tmp_path / "folder" / split / cls / f"{i}.png")
    data = load_dataset(str(tmp_path / "folder"), None, False, 16, 1)
    assert data.class_names == ["cat", "dog"] and data.test.images.shape == (6, 1, 16, 16)
    assert data.train is not None and len(data.train.labels) == 6


def test_unknown_or_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(CompressorError, match="unknown dataset"):
        load_dataset("imagenet22k", None, False, 32, 3)
    with pytest.raises(CompressorError, match="--download"):
        load_dataset("cifar10", str(tmp_path), False, 32, 3)


def test_a_broken_archive_leaves_nothing_behind_and_a_good_one_then_loads(tmp_path, monkeypatch):
    """A failed unpacking must not leave half a folder that a later run would take for the dataset."""
    import tarfile

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "src" / "test" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "0.png")
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="d")
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])  # a truncated copy, of the same name
    with pytest.raises(CompressorError, match="could not be read as a tar archive"):
        load_dataset(str(archive), None, False, 8, 3)
    assert not any((tmp_path / "cache").glob("archive-*"))
    archive.write_bytes(good)
    assert load_dataset(str(archive), None, False, 8, 3).class_names == ["cat"]


@pytest.mark.parametrize("wrapped", [True, False], ids=["one-top-folder", "splits-at-the-top"])
def test_an_archive_loads_as_its_folder_without_being_unpacked(tmp_path, monkeypatch, wrapped):
    """The same images, labels and classes as the folder it was made from, decoded from memory: nothing but the
    decoded copy is written to the cache, and a second load reads that copy."""
    import tarfile

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    for split, classes in (("train", ("b", "a", "c")), ("test", ("b", "a", "c"))):
        for k, cls in enumerate(classes):
            (src / split / cls / "nested").mkdir(parents=True)
            for i in (3, 1, 10, 2)[: 2 + k]:  # unsorted names, different counts per class
                pixels = rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(src / split / cls / f"{i}.{'jpg' if i % 2 else 'png'}")
            (src / split / cls / "notes.txt").write_text("not an image")
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src / split / cls / "nested" / "ignored.png")
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if wrapped:
            tar.add(src, arcname="d")
        else:
            for split in ("test", "train"):
                tar.add(src / split, arcname=split)
    from_folder = load_dataset(str(src), None, False, 8, 3)
    from_archive = load_dataset(str(archive), None, False, 8, 3)
    cached = load_dataset(str(archive), None, False, 8, 3)
    assert from_archive.class_names == from_folder.class_names == ["a", "b", "c"]
    for data in (from_archive, cached):
        for split in ("train", "test"):
            a, b = getattr(data, split), getattr(from_folder, split)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images), split
    assert from_archive.name == cached.name == "d"  # the top folder's name, or the archive's
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert kept == ["archive", "folder", "folder"], kept  # decoded copies only (the folder's two splits): no files unpacked


def test_an_unreadable_image_in_an_archive_is_named(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "cat" / "0.png")
    (tmp_path / "src" / "cat" / "1.jpg").write_text("a note saved with the wrong name")
    archive = tmp_path / "cats.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src", arcname="cats")
    with pytest.raises(CompressorError, match=r"cats\.tar:cats/cat/1\.jpg is not a readable image"):
        load_dataset(str(archive), None, False, 8, 3)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
