"""The engine's shared pieces: putting modules back after a trial, the run folder's metrics log, the registries the
command line reads its choices from."""
from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from compressor.__main__ import build_parser
from compressor.config import RUN_PRESETS, MethodSettings, preset_overrides
from compressor.errors import CompressorError, first_line
from compressor.kept import kept
from compressor.methods import METHODS
from compressor.models import create_model
from compressor.run_folder import RunPaths, read_metrics, truncate_metrics
from compressor.students import StudentFamily


def test_kept_puts_weights_statistics_modes_flags_and_random_state_back():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    model.eval()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = torch.get_rng_state()
    draw_after = torch.rand(3)  # what the random stream gives next, had nothing drawn from it
    torch.set_rng_state(stream)
    with kept([model], rng_device=torch.device("cpu")):
        model.train().requires_grad_(True)
        model(torch.randn(4, 3, 32, 32)).sum().backward()  # moves BatchNorm statistics, makes gradients, draws
        torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(3), draw_after)


def test_kept_leaves_the_random_stream_alone_unless_asked():
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(1)
    with kept([model]):
        torch.rand(5)
    after = torch.rand(1)
    torch.manual_seed(1)
    torch.rand(5)
    assert torch.equal(torch.rand(1), after)


def test_the_metrics_log_is_read_by_line_without_half_written_records(tmp_path):
    path = RunPaths(tmp_path).metrics
    assert read_metrics(path) == ([], 0)
    path.write_text(json.dumps({"step": 1}) + "\n" + "not json\n" + json.dumps({"step": 3}) + "\n" + '{"step": 4')
    records, next_line = read_metrics(path)
    assert records == [{"step": 1}, {}, {"step": 3}] and next_line == 3  # the damaged line keeps its place
    assert read_metrics(path, start=1, limit=1) == ([{}], 2)
    assert read_metrics(path, start=3) == ([], 3)  # the unfinished last line waits for its newline
    truncate_metrics(path.with_name("other.jsonl"), 2)  # no log yet: nothing to cut
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    truncate_metrics(path, 3)
    assert [r["step"] for r in read_metrics(path)[0]] == [1, 2, 3]
    # A record cut short by a kill or a full disk, with a record after it (the next run's): the resume drops it.
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "s_lo' + json.dumps({"step": 2}) + "\n")
    truncate_metrics(path, 3)
    assert path.read_text() == json.dumps({"step": 1}) + "\n"
    assert not path.with_name(path.name + ".tmp").exists()


def test_run_paths_name_the_layout_of_a_run_folder(tmp_path):
    paths = RunPaths(tmp_path)
    assert paths.last == tmp_path / "checkpoints" / "last.pt" and paths.best == tmp_path / "checkpoints" / "best.pt"
    assert paths.rank_dir(0) == tmp_path and paths.rank_dir(2) == tmp_path / "ranks" / "2"
    assert not paths.resumable()
    paths.checkpoints.mkdir()
    paths.last.touch()
    paths.config.write_text("{}")
    assert paths.resumable()


def test_the_command_line_offers_what_the_registries_hold():
    actions = {a.dest: a for a in build_parser()._actions}
    assert actions["method"].choices == list(METHODS)
    assert actions["preset"].choices == list(RUN_PRESETS)
    assert actions["student"].choices == list(get_args(StudentFamily))
    assert {name: MethodSettings(name=name).round for name in METHODS} == {"default": (10, 10), "dfad": (1, 5)}
    assert preset_overrides("seed")["method"].name == "dfad"
    with pytest.raises(CompressorError, match="unknown preset"):
        preset_overrides("nope")


def test_first_line_of_an_exception():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 300), 10) == "x" * 10
