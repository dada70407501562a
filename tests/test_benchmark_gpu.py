"""`python -m benchmarks.gpu --tiny`: the GPU benchmark's harness, run on the CPU with small shapes."""
import json

from benchmarks.gpu import main
from compressor.config import ROUND_DEFAULTS


def test_tiny_gpu_benchmark_runs_on_cpu_and_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["steps"] == 4 and row["student_updates"] == 4 * ROUND_DEFAULTS["default"][1]
    assert row["steps_per_second"] > 0 and row["images_per_second"] > 0
    assert row["seconds_to_first_step"] > 0 and row["seconds_after_last_step"] > 0
    assert row["gpu_busy_percent"] is None and row["peak_gpu_memory_gb"] is None  # no GPU here: unknown, not zero
    assert "steps/s" in capsys.readouterr().out
