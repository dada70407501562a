"""`python -m benchmarks.cifar10 run --quick` on the real CIFAR-10 archive: result files, schema, and default > dfad."""
import json

import numpy as np
import pytest

from benchmarks.cifar10 import DEFAULT_ARCHIVE, main

pytestmark = [pytest.mark.heavy(seconds=115), pytest.mark.skipif(
    not DEFAULT_ARCHIVE.exists(), reason=f"CIFAR-10 archive not found at {DEFAULT_ARCHIVE} (../shared/datasets)"
)]


def test_quick_benchmark_writes_results_and_default_beats_dfad(tmp_path):
    rc = main(["run", "--quick", "--ratios", "0.2", "--student-steps", "30", "--batch-size", "64", "--eval-points", "2",
               "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--quiet"])
    assert rc == 0
    result = json.loads((tmp_path / "results" / "cifar10_0.2_quick.json").read_text())
    assert result["quick"] is True and result["dataset"] == "cifar10" and result["ratio"] == 0.2
    assert set(result["teacher"]) >= {"arch", "params", "accuracy"}
    assert set(result["contenders"]) == {"dfad", "default", "kd-real", "scratch"}
    params = {c["params"] for c in result["contenders"].values()}
    assert len(params) == 1 and params.pop() <= 0.2 * result["teacher"]["params"]
    for name, c in result["contenders"].items():
        assert set(c) >= {"params", "student_steps", "batch_size", "wall_seconds", "images_per_second", "accuracy", "curve"}
        assert c["student_steps"] == 30 and c["batch_size"] == 64
        assert set(c["accuracy"]) == {"full", "test_10", "test_20"}
        assert all(0 <= a <= 1 for a in c["accuracy"].values()), name
        assert len(c["curve"]) >= 2
    for key in ("device", "machine", "date", "command"):
        assert result[key]
    assert (tmp_path / "results" / "accuracy_vs_steps_0.2_quick.png").exists()
    acc = {n: c["accuracy"]["full"] for n, c in result["contenders"].items()}
    # Seeded run: the seed's DFAD stays near chance (10 %) while the default method learns (8.45 % and 40.00 % here
    # at 30 updates, on one thread, from the kept quick teacher; 8.95 % and 41.00 % at 50).
    assert acc["default"] > acc["dfad"] + 0.04, acc


def test_bad_contender_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--quick", "--contenders", "dfad,magic", "--work-dir", str(tmp_path)]) == 2
    assert "unknown contenders" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "the teacher's epochs must be positive, got 0"),
    ("--batch-size", "-8", "the teacher's batch size must be positive, got -8"),
    ("--lr", "0", "the teacher's learning rate must be positive, got 0.0"),
    ("--minutes", "0", "the teacher's time budget in minutes must be positive, got 0.0"),
])
def test_bad_teacher_recipe_is_a_clear_error(tmp_path, capsys, option, value, message):
    """Refused before the data is read, as one line and exit 2 (an epoch count of 0 used to end in a scheduler traceback)."""
    assert main(["teacher", option, value, "--out", str(tmp_path / "t.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "t.pth").exists()


def test_gpu_benchmark_trains_a_teacher_and_fits_the_distillation_to_its_budget(tmp_path):
    """`python -m benchmarks.cifar10_gpu --tiny`: the GPU target's script end to end on the CPU (a 2 % subset), with
    the options a lease tunes: the teacher's batch and peak learning rate, compiled training steps (the `eager`
    backend here, which needs no compiler), the method's settings, and the validation split to compare them on;
    and the seed's shape: the MACs-budgeted student at a ratio, exported and timed against its teacher."""
    from benchmarks.cifar10_gpu import main as gpu_main

    method = '{"generator_steps": 2, "student_steps": 3, "diversity_weight": 0}'  # g = 2: a cheaper round, same logic

    out = tmp_path / "gpu.json"
    assert gpu_main(["--tiny", "--minutes", "0.2", "--teacher-batch-size", "50", "--teacher-lr", "0.05", "--teacher-minutes", "1",
                     "--compile", "eager", "--method", method, "--eval-on", "val", "--ratio", "0.3", "--export",
                     "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["teacher"]["arch"] == "resnet14" and 0 <= result["teacher"]["accuracy"]["full"] <= 1
    teacher = result["teacher"]
    # --tiny: 1 epoch at most
    assert (teacher["batch_size"], teacher["lr"], teacher["minutes"], teacher["epochs"]) == (50, 0.05, 1, 1)
    assert result["student"]["compile"] == "training steps compiled with torch.compile (eager)"
    assert result["student"]["cuda_graphs"] is None  # not asked for
    assert (tmp_path / "work" / "cifar10_resnet14.pth").is_file()
    student = result["student"]
    assert 0.25 < student["ratio"] <= 0.3  # the budgeted student: as close under the budget as its widths allow
    assert set(student["onnx_cpu_speedup"]) == {"1", "64"} and all(x > 0 for x in student["onnx_cpu_speedup"].values())
    assert (tmp_path / "work" / "run" / "student.onnx").is_file()
    # The rounds follow from the budget less --tiny's 2 + 1 evaluations, at the trial's measured seconds per round
    # and per evaluation (never fewer rounds than the trial's).
    trial = result["trial"]
    assert trial["seconds_per_round"] > 0 and trial["seconds_per_evaluation"] > 0
    assert (trial["warm_up_rounds"], trial["rounds"]) == (1, 4)  # --tiny's: a dry run's trial, not a timing
    expected = max(4, int((0.95 * 0.2 * 60 - 3 * trial["seconds_per_evaluation"]) / trial["seconds_per_round"]))
    assert student["rounds"] == expected and student["student_updates"] == 3 * expected  # --method's k, not the default 10
    assert student["method"] == json.loads(method)
    # The curve was measured on the validation split (10 % of the 1,000-image train subset), test/ never written.
    assert student["evaluated_on"] == "val" and not (tmp_path / "work" / "test.npz").exists()
    assert list(student["accuracy"]) == ["full"]
    with np.load(tmp_path / "work" / "val.npz") as val:
        assert len(val["labels"]) == 100 and sorted(np.bincount(val["labels"])) == [10] * 10
    run_config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert run_config["method"]["diversity_weight"] == 0 and run_config["eval"]["dataset"].endswith("val.npz")
    assert [step for step, _ in student["curve"]][-1] == expected and all(0 <= a <= 1 for _, a in student["curve"])


def test_gpu_trial_is_sized_in_student_steps():
    """A large k gets fewer warm-up and trial rounds (a lease's minutes are dear), never fewer than 2 and 8."""
    from benchmarks.cifar10_gpu import warm_up_and_trial_rounds

    assert warm_up_and_trial_rounds(10) == (5, 40)
    assert warm_up_and_trial_rounds(40) == (2, 10)
    assert warm_up_and_trial_rounds(25) == (2, 16)
    assert warm_up_and_trial_rounds(400) == (2, 8)
    assert warm_up_and_trial_rounds(1) == (5, 40)


def test_teacher_epochs_are_fitted_to_a_time_budget():
    """`teacher --minutes`: the epochs that fit, timed on this machine, never more than --epochs and never none."""
    import argparse

    import torch

    from benchmarks.cifar10 import _epochs_within
    from compressor.data import Split
    from compressor.models import create_model

    g = torch.Generator().manual_seed(0)
    train = Split(torch.rand(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g))
    model = create_model("resnet8", num_classes=10)
    args = argparse.Namespace(epochs=7, batch_size=32, lr=0.1)
    cpu = torch.device("cpu")
    assert _epochs_within(1e-4, model, train, args, cpu) == 1  # a budget shorter than one epoch still trains one
    assert _epochs_within(60.0, model, train, args, cpu) == 7  # an hour's budget is capped by --epochs


@pytest.mark.parametrize("method, message", [
    ("nope", "--method must be a JSON object: Expecting value: line 1 column 1 (char 0)"),
    ("[1]", "--method must be a JSON object, e.g. '{\"diversity_weight\": 0}'"),
    ('{"diversity_weight": -1}', "--method: diversity_weight: Input should be greater than or equal to 0"),
    ('{"colour": 1}', "--method: colour: Extra inputs are not permitted"),
])
def test_bad_gpu_method_settings_are_a_clear_error(tmp_path, capsys, method, message):
    """Refused as one line and exit 2 before the data is read: on a lease, before any device time is spent."""
    from benchmarks.cifar10_gpu import main as gpu_main

    out = tmp_path / "gpu.json"
    assert gpu_main(["--tiny", "--method", method, "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not out.exists()


def test_compiled_steps_and_cuda_graphs_together_are_refused(tmp_path, capsys):
    """Each takes over the training steps; refused by the parser (exit 2) before any data is read or device time spent."""
    from benchmarks.cifar10_gpu import main as gpu_main

    with pytest.raises(SystemExit) as stop:
        gpu_main(["--tiny", "--compile", "--cuda-graphs", "--work-dir", str(tmp_path / "work")])
    assert stop.value.code == 2
    assert "choose --compile or --cuda-graphs, not both" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_a_bad_student_ratio_is_a_clear_error(tmp_path, capsys):
    """--ratio outside (0, 1) is refused as one line and exit 2 before any data is read; --student with it is a
    parser error."""
    from benchmarks.cifar10_gpu import main as gpu_main

    out = tmp_path / "gpu.json"
    assert gpu_main(["--tiny", "--ratio", "1.5", "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --ratio: ratio: ratio must be in (0, 1), got 1.5"
    with pytest.raises(SystemExit) as stop:
        gpu_main(["--tiny", "--ratio", "0.1", "--student", "resnet8", "--work-dir", str(tmp_path / "work")])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "work").exists()
