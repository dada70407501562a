"""The loop: checkpoints, exact resume, data-free selection, no-data runs."""
import json

import pytest
import torch

from compressor.config import EvalConfig, GeneratorConfig, MethodSettings, RunConfig, StudentConfig, TeacherConfig
from compressor.engine import run
from compressor.models import create_model
from compressor.run_folder import RunPaths

pytestmark = pytest.mark.heavy(seconds=125)


def _tiny_config(tmp_path, name: str, steps: int = 6, dataset: str | None = None, pool_size: int = 50_000,
                 **method: object) -> RunConfig:
    teacher = tmp_path / "teacher.pth"
    if not teacher.exists():
        torch.manual_seed(0)
        torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), teacher)
    return RunConfig(
        out_dir=str(tmp_path / name),
        teacher=TeacherConfig(path=str(teacher), input_size=16, mean=(0.3,), std=(0.4,)),
        student=StudentConfig(ratio=0.3),
        generator=GeneratorConfig(width=8, noise_dim=16),
        eval=EvalConfig(dataset=dataset, eval_every=2, heldout_per_eval=16),
        steps=steps,
        batch_size=16,
        method=MethodSettings(generator_steps=2, student_steps=2, pool_size=pool_size, **method),
        device="cpu",
        export_onnx=False,
    )


@pytest.mark.parametrize("pool_size, method", [(50_000, {}), (24, {}), (50_000, {"diversity_weight": 1.0, "diversity_bank": 20}),
                                               (50_000, {"label_ahead": True})],
                         ids=["pool-append-only", "pool-wrapped", "diversity-bank", "labelled-ahead"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, pool_size, method):
    """The synthetic pool is part of the state: a 24-image pool has wrapped (6 rounds of 16) before the stop.
    The diversity term's bank of features (20 of the 48 images stored by the stop) is state too."""
    straight = run(_tiny_config(tmp_path, "straight", pool_size=pool_size, **method), quiet=True)
    cfg = _tiny_config(tmp_path, "resumed", pool_size=pool_size, **method)
    partial = run(cfg, stop_at_step=3, quiet=True)
    assert not partial.finished
    assert torch.load(RunPaths(tmp_path / "resumed").last, weights_only=True)["step"] == 3
    resumed_cfg = RunConfig.model_validate_json((tmp_path / "resumed" / "config.json").read_text())
    resumed = run(resumed_cfg, resume=True, quiet=True)

    def losses(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k != "eval"}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    a = torch.load(RunPaths(tmp_path / "straight").last, weights_only=True)
    b = torch.load(RunPaths(tmp_path / "resumed").last, weights_only=True)
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    assert straight.report["selection"] == resumed.report["selection"]
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])


def test_run_without_data_reports_accuracy_as_not_measured(tmp_path):
    result = run(_tiny_config(tmp_path, "nodata", steps=2), quiet=True)
    report = json.loads((tmp_path / "nodata" / "report.json").read_text())
    assert report["student"]["accuracy"] == {"full": None, "test_10": None, "test_20": None}
    assert "not measured" in (tmp_path / "nodata" / "report.md").read_text()
    for name in ("config.json", "metrics.jsonl", "checkpoints/best.pt", "accuracy.png", "samples.png"):
        assert (tmp_path / "nodata" / name).exists(), name
    assert result.report["selection"]["criterion"].startswith("teacher agreement")


def test_selection_never_touches_test_labels(tmp_path):
    """Selection scores come from synthetic images only: identical with and without a labelled dataset."""
    with_data = run(_tiny_config(tmp_path, "with", dataset="digits"), quiet=True)
    without = run(_tiny_config(tmp_path, "without"), quiet=True)
    assert [h["selection_score"] for h in with_data.history] == [h["selection_score"] for h in without.history]
    assert with_data.report["student"]["accuracy"]["full"] is not None


def test_teacher_onnx_is_exported_once_per_teacher_and_carries_each_runs_metadata(tmp_path, monkeypatch):
    from compressor.data import cache_dir
    from export.metadata import read_metadata
    from export.onnx import cpu_session

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    first = _tiny_config(tmp_path, "first", steps=1).model_copy(update={"export_onnx": True})
    run(first, quiet=True)
    cached = list((cache_dir() / "teachers").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].name.startswith(first.teacher.sha256)
    second = _tiny_config(tmp_path, "second", steps=1).model_copy(update={"export_onnx": True})
    second.method = second.method.model_copy(update={"name": "dfad"})
    report = run(second, quiet=True).report
    meta = read_metadata(tmp_path / "second" / "teacher.onnx")
    assert meta["method"] == "dfad" and meta["role"] == "teacher"
    assert report["deployment"]["verification"]["teacher_max_abs_logit_diff"] <= 1e-4
    x = torch.randn(3, 1, 16, 16).numpy()
    a = cpu_session(tmp_path / "first" / "teacher.onnx").run(None, {"input": x})[0]
    b = cpu_session(tmp_path / "second" / "teacher.onnx").run(None, {"input": x})[0]
    assert (a == b).all()

    # student.safetensors: the exported student's weights, rebuilt from the spec in its own metadata.
    from safetensors import safe_open

    from compressor.models import create_model as build

    with safe_open(str(tmp_path / "second" / "student.safetensors"), "pt") as f:
        meta = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    student = build(meta["arch"], num_classes=10, in_channels=1, spec=json.loads(meta["spec"])).eval()
    student.load_state_dict(weights)
    onnx_logits = cpu_session(tmp_path / "second" / "student.onnx").run(None, {"input": x})[0]
    assert abs(student(torch.from_numpy(x)).detach().numpy() - onnx_logits).max() < 1e-4


def test_auto_batch_size_is_chosen_by_trial_and_leaves_the_run_unchanged(tmp_path):
    """The trial rounds put every weight and random state back: the auto run equals a run at the chosen size."""
    auto_cfg = _tiny_config(tmp_path, "auto", steps=2).model_copy(update={"batch_size": "auto"})
    auto = run(auto_cfg, quiet=True).report
    choice = auto["batch_size_auto"]
    assert choice["batch_size"] == auto["batch_size"] >= 16
    assert choice["batch_size"] & (choice["batch_size"] - 1) == 0  # a power of two
    assert [t["batch_size"] for t in choice["trials"]][0] == 16 and choice["reason"]
    assert RunConfig.model_validate_json((tmp_path / "auto" / "config.json").read_text()).batch_size == auto["batch_size"]
    fixed = run(_tiny_config(tmp_path, "fixed", steps=2).model_copy(update={"batch_size": auto["batch_size"]}), quiet=True).report
    assert fixed["history"] == auto["history"]
    lines = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines("auto") == lines("fixed")


def test_compiled_training_steps_train_the_same_and_a_failed_compile_falls_back(tmp_path):
    """Dynamo's `eager` backend traces the real steps (graph capture, guards, the batch-norm hooks) without
    inductor's C++ toolchain: the run must match the uncompiled one. An unusable backend is reported and the
    run goes on eagerly, with the same result."""
    lines = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    plain = run(_tiny_config(tmp_path, "plain", steps=2), quiet=True).report
    assert plain["compile"] is None
    compiled = run(_tiny_config(tmp_path, "compiled", steps=2).model_copy(update={"compile": "eager"}), quiet=True).report
    assert compiled["compile"] == "training steps compiled with torch.compile (eager)"
    broken = run(_tiny_config(tmp_path, "broken", steps=2).model_copy(update={"compile": "no_such_backend"}), quiet=True).report
    assert broken["compile"].startswith("torch.compile (no_such_backend) failed, running eagerly: InvalidBackend")
    for name in ("compiled", "broken"):
        for a, b in zip(lines("plain"), lines(name), strict=True):
            assert a.keys() == b.keys()
            assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a if k != "eval"), (name, a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's CUDA kernels need a GPU (the device lease runs it)")
@pytest.mark.parametrize("mode", [{"compile": "inductor"}, {"label_ahead": False}], ids=["inductor", "labelled-in-step"])
def test_on_cuda_each_step_mode_trains_as_the_eager_default(tmp_path, mode):
    """What a GPU lease times must train the same before its speed counts: inductor's kernels, and the teacher
    labelling each batch in its step (CUDA labels a round's batches ahead by default), against the eager default."""
    lines = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    torch._dynamo.reset()
    eager = run(_tiny_config(tmp_path, "eager", steps=4).model_copy(update={"device": "cuda"}), quiet=True).report
    label_ahead = {"label_ahead": mode["label_ahead"]} if "label_ahead" in mode else {}
    other = _tiny_config(tmp_path, "other", steps=4, **label_ahead).model_copy(
        update={"device": "cuda", "compile": mode.get("compile")})
    report = run(other, quiet=True).report
    assert report["compile"] == ("training steps compiled with torch.compile (inductor)" if "compile" in mode else None)
    assert eager["student_updates"] == report["student_updates"] == 8
    for a, b in zip(lines("eager"), lines("other"), strict=True):
        assert a.keys() == b.keys()
        # bf16 autocast, and other kernels (fused, or chosen by cuDNN in another run) round differently
        assert all(a[k] == pytest.approx(b[k], rel=5e-2, abs=5e-3) for k in a if k != "eval"), (a, b)


@pytest.mark.parametrize("method", [{}, {"label_ahead": True}], ids=["default", "labelled-ahead"])
def test_compiled_steps_are_traced_once_while_the_diversity_bank_fills(tmp_path, method):
    """The shapes a compiled round sees stay the same from the warm-up on: a diversity bank that grew with every
    stored batch recompiled the synthesis step each round until dynamo's limit (8) sent it back to eager for
    good, on a GPU after 8 of the 16 rounds a 4,096-image bank takes to fill. Here any recompilation is an error;
    the warm-up traces what a round runs, optimised noise (which requires gradients) included."""
    torch._dynamo.reset()
    cfg = _tiny_config(tmp_path, "static", steps=10, diversity_weight=1.0, diversity_bank=40, **method)  # full after 3 rounds
    with torch._dynamo.config.patch(error_on_recompile=True):
        report = run(cfg.model_copy(update={"compile": "eager"}), quiet=True).report
    assert report["compile"] == "training steps compiled with torch.compile (eager)"
    assert report["student_updates"] == 20


def test_labelling_a_rounds_batches_ahead_trains_as_labelling_each_in_its_step(tmp_path):
    """`label_ahead` (CUDA's default) moves the teacher's forward passes out of the student steps, one per chunk of
    the round's batches: the same batches and targets, so the same losses (to float noise) and the same student."""
    lines = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    run(_tiny_config(tmp_path, "in-step", steps=4, label_ahead=False), quiet=True)
    run(_tiny_config(tmp_path, "ahead", steps=4, label_ahead=True), quiet=True)
    assert len(lines("ahead")) == 4
    for a, b in zip(lines("in-step"), lines("ahead"), strict=True):
        assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5) for k in a if k != "eval"), (a, b)
    in_step, ahead = (torch.load(RunPaths(tmp_path / name).last, weights_only=True)["student"]
                      for name in ("in-step", "ahead"))
    assert all(torch.allclose(in_step[k].float(), ahead[k].float(), rtol=1e-4, atol=1e-5) for k in in_step)


def test_metrics_carry_losses_every_step_and_evaluations_at_eval_steps(tmp_path):
    report = run(_tiny_config(tmp_path, "metrics", steps=4, dataset="digits"), quiet=True).report
    # The rounds' own time is told apart from the loop's evaluations and checkpoints (what a time budget is
    # planned on), and the synthesis rate is measured on it.
    timing = report["timing"]
    assert 0 < timing["train_seconds"] < timing["loop_seconds"]
    assert report["images_per_second"] == pytest.approx(report["images_synthesised"] / timing["train_seconds"])
    records = [json.loads(x) for x in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"s_loss", "g_bn", "lr"} <= set(r) for r in records)
    assert [r["step"] for r in records if "eval" in r] == [2, 4]
    assert all(r["eval"]["accuracy"] is not None for r in records if "eval" in r)


def test_a_named_student_is_built_as_registered_and_resumes_as_itself(tmp_path):
    """--student-arch: the published pairs (WRN-40-2 -> WRN-16-1) are reproduced with the very architecture."""
    cfg = _tiny_config(tmp_path, "named", steps=4)
    cfg.student = StudentConfig(name="resnet8")
    partial = run(cfg, stop_at_step=2, quiet=True)
    assert not partial.finished
    saved = RunConfig.model_validate_json((tmp_path / "named" / "config.json").read_text())
    expected = create_model("resnet8", num_classes=10, in_channels=1)
    assert (saved.student.arch, saved.student.params) == ("resnet8", sum(p.numel() for p in expected.parameters()))
    report = run(saved, resume=True, quiet=True).report
    assert report["student"]["arch"] == "resnet8"
    assert report["ratio"] == pytest.approx(report["student"]["params"] / report["teacher"]["params"])
    weights = torch.load(RunPaths(tmp_path / "named").best, weights_only=True)["student"]
    expected.load_state_dict(weights)  # the same architecture, key for key and shape for shape
