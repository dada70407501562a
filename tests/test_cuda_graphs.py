"""`--cuda-graphs`: the synthesis step and the student's training forward and backward replayed as CUDA graphs, or an
eager run that says why.

The tests that replay graphs need a GPU and are skipped without one (the device lease runs them)."""
import contextlib
import copy
import json

import pytest
import torch

from compressor.config import MethodSettings
from compressor.cuda_graphs import graph_student, graph_synthesis
from compressor.engine import run
from compressor.generator import Generator
from compressor.methods import SynthBatch, create_method
from compressor.models import create_model
from tests.test_distill import _tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_graphs_need_cuda_and_the_student_is_left_as_it_was():
    student = create_model("resnet8", num_classes=10)
    before = copy.deepcopy(student.state_dict())
    graphed, note = graph_student(student, torch.randn(4, 3, 32, 32), amp=False)
    assert graphed is None and note.startswith("CUDA graphs need a CUDA device (this run is on cpu)")
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


@needs_cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_a_graphed_student_trains_as_the_eager_one(amp):
    """Three SGD steps on new batches: the graph reads each batch and the updated weights, its outputs, gradients
    and BatchNorm statistics are the eager student's; the capture's warm-up leaves the student as it was; in eval
    mode (evaluation, the generator's loss) the student runs its own forward."""
    torch.manual_seed(0)
    student = create_model("resnet20", num_classes=10).cuda().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(student)
    before = copy.deepcopy(student.state_dict())
    graphed, note = graph_student(student, torch.randn(8, 3, 32, 32, device="cuda"), amp)
    assert graphed is not None, note
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    tol = {"atol": 2e-2, "rtol": 2e-2} if amp else {"atol": 1e-4, "rtol": 1e-4}
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (student, reference)]
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, device="cuda")
        outputs = []
        for forward, opt in zip((graphed, reference), optimisers, strict=True):
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = forward(x)
            out.float().square().mean().backward()
            outputs.append(out.float().detach().clone())
        assert torch.allclose(outputs[0], outputs[1], **tol)
        for p, q in zip(student.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, **tol)
        for opt in optimisers:
            opt.step()
    for (name, a), b in zip(student.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), **tol), name  # weights and BatchNorm statistics alike
    student.eval(), reference.eval()
    trained = copy.deepcopy(student.state_dict())
    with torch.no_grad():
        for x in (torch.randn(8, 3, 32, 32, device="cuda"), torch.randn(3, 3, 32, 32, device="cuda")):
            assert torch.allclose(graphed(x), reference(x), **tol)  # eval mode, any batch: the student's own forward
    assert all(torch.equal(v, trained[k]) for k, v in student.state_dict().items())  # no training step replayed


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_run_with_cuda_graphs_trains_as_an_eager_run_and_says_which_it_was(tmp_path, device):
    lines = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    plain = run(_tiny_config(tmp_path, "plain", steps=4).model_copy(update={"device": device}), quiet=True).report
    assert plain["cuda_graphs"] is None
    graphed = run(_tiny_config(tmp_path, "graphed", steps=4).model_copy(update={"device": device, "cuda_graphs": True}),
                  quiet=True).report
    if device == "cpu":
        assert graphed["cuda_graphs"] == "CUDA graphs need a CUDA device (this run is on cpu): both steps run eagerly"
        tol = {"rel": 0, "abs": 0}  # the same run: the note must not have changed a random stream
    else:
        assert graphed["cuda_graphs"] == "the synthesis and the student's steps replayed as CUDA graphs (batch 16)"
        tol = {"rel": 5e-2, "abs": 5e-3}  # bf16 autocast, and cuDNN may choose other kernels in another run
    for a, b in zip(lines("plain"), lines("graphed"), strict=True):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], **tol) for k in a if k != "eval"), (a, b)


@needs_cuda
def test_a_graphed_synthesis_step_optimises_the_generator_as_the_eager_one(tmp_path):
    """Two identical set-ups, one graphed: four generator steps (Adam) with the diversity bank filling between them
    in place (the graph reads it where it was captured) and the student's weights changing under it. Losses, logs
    and generator weights agree; the logs of one replay survive the next; the capture left the generator as it was."""
    def build(workdir):
        torch.manual_seed(0)
        teacher = create_model("resnet20", num_classes=10).cuda().eval().requires_grad_(False)
        student = create_model("resnet8", num_classes=10).cuda().requires_grad_(False)
        gen = Generator(16, 3, 32, (0.5,) * 3, (0.25,) * 3, width=8).cuda()
        # The adversarial term counts where the two agree: a random pair may agree nowhere, and the student's weights
        # would then not reach the loss at all. Both favour class 0, so they agree on most images whatever the step.
        with torch.no_grad():
            teacher.linear.bias[0] += 4
            student.linear.bias[0] += 4
        settings = MethodSettings(pool_size=64, diversity_bank=16)
        method = create_method("default", teacher, student, gen, settings, workdir)

        def synthesis_loss(z):
            images = gen(z)
            loss, logs = method.generator_loss(SynthBatch(z, images))
            return images, loss, logs
        return gen, student, method, synthesis_loss, torch.optim.Adam(gen.parameters(), lr=1e-3)

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    eager, graphed = build(tmp_path / "a"), build(tmp_path / "b")
    before = copy.deepcopy(graphed[0].state_dict())
    step, why = graph_synthesis(graphed[3], graphed[0], graphed[1], torch.randn(8, 16, device="cuda"), amp=False)
    assert step is not None, why
    assert all(torch.equal(v, before[k]) for k, v in graphed[0].state_dict().items())
    kept = []
    for i in range(4):
        z = torch.randn(8, 16, device="cuda")
        results = []
        for (_gen, student, method, _eager_step, opt), run_step in ((eager, eager[3]), (graphed, step)):
            images, loss, logs = run_step(z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.store(images.detach())  # fills the bank the next step is repelled from
            with torch.no_grad():
                for p in student.parameters():  # the student moves between rounds; the graph must see it
                    p.mul_(0.9)
            results.append((loss.detach().clone(), logs))
        (loss_e, logs_e), (loss_g, logs_g) = results
        assert torch.allclose(loss_e, loss_g, atol=1e-4, rtol=1e-4), i
        assert logs_e.keys() == logs_g.keys() and "g_repulsion" in logs_g and logs_g["g_adv"] > 0
        kept.append((logs_e, logs_g))
    for logs_e, logs_g in kept:  # read after all four steps, as the loop's flush does
        assert all(torch.allclose(logs_e[k], logs_g[k], atol=1e-4, rtol=1e-4) for k in logs_e)
    for a, b in zip(eager[0].state_dict().values(), graphed[0].state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)
