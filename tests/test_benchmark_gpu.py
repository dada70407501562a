"""`python -m benchmarks.gpu --tiny`: the GPU benchmark's harness, run on the CPU with small shapes."""
import json

from benchmarks.gpu import main
from compressor.methods import METHODS


def test_tiny_gpu_benchmark_runs_on_cpu_and_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["steps"] == 4 and row["student_updates"] == 4 * METHODS["default"].default_round[1]
    assert row["steps_per_second"] > 0 and row["images_per_second"] > 0
    assert row["seconds_to_first_step"] > 0 and row["seconds_after_last_step"] > 0
    assert row["gpu_busy_percent"] is None and row["peak_gpu_memory_gb"] is None  # no GPU here: unknown, not zero
    assert "steps/s" in capsys.readouterr().out


def test_each_pair_runs_once_per_step_mode_and_says_what_it_ran(tmp_path):
    """`--compile off,cuda-graphs`: a row per mode, in order; on the CPU the graphed row says it ran eagerly and why."""
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--compile", "off,cuda-graphs", "--out", str(out)]) == 0
    eager, graphed = json.loads(out.read_text())["rows"]
    assert eager["pair"] == graphed["pair"] and eager["cuda_graphs"] is None and graphed["compile"] is None
    assert graphed["cuda_graphs"] == "CUDA graphs need a CUDA device (this run is on cpu): both steps run eagerly"
