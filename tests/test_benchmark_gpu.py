"""`python -m benchmarks.gpu --tiny`: the GPU benchmark's harness, run on the CPU with small shapes."""
import argparse
import json
import os
import time

from benchmarks.gpu import BusySampler, Pair, main, rounds_for, run_pair
from compressor.config import MethodSettings
from compressor.methods import METHODS


def test_tiny_gpu_benchmark_runs_on_cpu_and_reports_every_figure(tmp_path, capsys):
    """A row per `--method` setting, in order, each with the round it ran and every figure."""
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--method", "{}", "--method", '{"student_steps": 3}', "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2
    assert [row["method"] for row in rows] == [{}, {"student_steps": 3}]
    assert [row["round"] for row in rows] == [list(METHODS["default"].default_round), [METHODS["default"].default_round[0], 3]]
    for row in rows:
        assert row["steps"] == 4 and row["student_updates"] == 4 * row["round"][1] and row["exported"] is True
        assert row["ms_per_round"] > 0 and row["steps_per_second"] > 0 and row["images_per_second"] > 0
        assert row["seconds_to_first_step"] > 0 and row["seconds_after_last_step"] > 0
        assert row["gpu_busy_percent"] is None and row["peak_gpu_memory_gb"] is None  # no GPU here: unknown, not zero
    assert "ms/round" in capsys.readouterr().out


def test_each_pair_runs_once_per_step_mode_and_says_what_it_ran(tmp_path, capsys):
    """`--compile off,cuda-graphs`: a row per mode, in order; on the CPU the graphed row says it ran eagerly and why,
    and the closing comparison puts each row against eager at the same settings."""
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--compile", "off,cuda-graphs", "--no-export", "--out", str(out)]) == 0
    eager, graphed = json.loads(out.read_text())["rows"]
    assert eager["exported"] is graphed["exported"] is False
    assert (eager["mode"], graphed["mode"]) == ("off", "cuda-graphs")
    assert eager["pair"] == graphed["pair"] and eager["cuda_graphs"] is None and graphed["compile"] is None
    assert graphed["cuda_graphs"] == "CUDA graphs need a CUDA device (this run is on cpu): both steps run eagerly"
    printed = capsys.readouterr().out.splitlines()
    first, second = printed[printed.index("compared with eager at the same settings:") + 1:][:2]
    assert first.startswith(f"{eager['pair']} | eager | {{}} | g/k ") and "(1.00x eager)" in first
    speed_up = eager["ms_per_round"] / graphed["ms_per_round"]
    assert "| cuda-graphs | {} |" in second and f"({speed_up:.2f}x eager)" in second
    assert second.endswith(graphed["cuda_graphs"])


def test_student_updates_become_rounds_of_each_settings_k_and_bad_arguments_are_one_line(capsys):
    args = argparse.Namespace(tiny=False, student_updates=400, steps=200)
    assert rounds_for(args, MethodSettings(student_steps=40)) == 10
    assert rounds_for(args, MethodSettings(student_steps=30)) == 14  # rounded up: never less student work
    assert rounds_for(argparse.Namespace(tiny=False, student_updates=None, steps=7), MethodSettings()) == 7
    assert main(["--tiny", "--pairs", "resnet8@x:0.3"]) == 2
    assert main(["--tiny", "--method", '{"student_step": 3}']) == 2
    assert main(["--tiny", "--pairs", "resnet8@16:resnet14"]) == 2  # a named student, refused as its row is built
    assert main(["--tiny", "--pairs", "resnet8@16:1.5"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == "error: --pairs: 'resnet8@x:0.3' is not arch@size:ratio or arch@size:student_arch"
    assert errors[1].startswith("error: --method: student_step")
    assert errors[2].startswith("error: resnet8 @ 16 px -> resnet14: student resnet14 has")
    assert errors[3] == "error: --pairs: 'resnet8@16:1.5': ratio: ratio must be in (0, 1), got 1.5" and len(errors) == 4


def test_each_run_resolves_its_own_student(tmp_path):
    """The engine writes the student it resolved into its config: the pair's own config must stay unresolved, or
    every run after the first (the timed one after a warm-up too) would skip the budget's search."""
    pair = Pair("resnet8@16:0.3")
    row = run_pair(pair, 1, "cpu", True, tmp_path, warm_up=1, export=False)
    assert row["student_params"] > 0
    assert pair.student.arch is None and pair.student.spec is None and pair.student.ratio == 0.3


def test_gpu_busy_is_read_from_nvidia_smi_where_nvml_is_missing(tmp_path, monkeypatch):
    """A GPU machine without `nvidia-ml-py` still has `nvidia-smi`: its own sampling loop is read line by line, and
    the tool is stopped with the sampler. No sampling at all where the run is not on a GPU."""
    asked = tmp_path / "asked"
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f'#!/bin/sh\necho "$@" > {asked}\nwhile :; do echo 57; sleep 0.02; done\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(BusySampler, "_open_nvml", lambda self: None)  # as where nvidia-ml-py is missing, GPU or not
    started = time.time()
    with BusySampler(interval=0.05) as sampler:
        time.sleep(0.6)
    assert sampler.source == "nvidia-smi"
    assert len(sampler.samples) >= 3 and sampler.mean_between(started, time.time()) == 57
    assert "--query-gpu=utilization.gpu" in asked.read_text() and "--loop-ms=50" in asked.read_text()
    assert not sampler._thread.is_alive() and sampler._process.returncode is not None  # the tool ended with the sampler
    with BusySampler(enabled=False) as off:
        time.sleep(0.1)
    assert off.source is None and off.samples == []
