import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from compressor.config import MethodSettings, RunConfig
from compressor.engine.optim import make_optimizer, optimizer_step
from compressor.generator import Generator
from compressor.methods import SynthBatch, create_method
from compressor.methods.losses import BatchNormStatistics, class_balance, kl_at_temperature
from compressor.methods.pool import SyntheticPool
from compressor.models import create_model


def test_class_balance_is_zero_for_uniform_and_log_k_for_one_class():
    uniform = torch.zeros(8, 10)
    assert abs(class_balance(uniform).item()) < 1e-6
    one_class = torch.full((8, 10), -50.0)
    one_class[:, 3] = 50.0
    assert abs(class_balance(one_class).item() - math.log(10)) < 1e-3


def test_kl_is_zero_only_when_logits_agree():
    t = torch.randn(6, 5)
    assert kl_at_temperature(t, t, 4.0).item() < 1e-6
    assert kl_at_temperature(torch.randn(6, 5), t, 4.0).item() > 1e-3


def test_bn_statistics_loss_grows_with_distribution_shift():
    bn = nn.BatchNorm2d(4).eval()  # running mean 0, var 1
    net = nn.Sequential(bn)
    stats = BatchNormStatistics(net)
    stats.active = True
    net(torch.randn(256, 4, 8, 8))
    matched = stats.collect().item()
    net(torch.randn(256, 4, 8, 8) * 3 + 2)
    shifted = stats.collect().item()
    assert matched < 0.2 < shifted
    stats.active = False
    net(torch.randn(8, 4, 8, 8))
    assert stats.collect().item() == 0.0
    # A forward that failed before its collect (a CUDA graph capture falling back) leaves moments behind; the next
    # recording starts without them.
    stats.start()
    net(torch.randn(256, 4, 8, 8) * 3 + 2)
    stats.start()
    net(torch.randn(256, 4, 8, 8))
    stats.active = False
    assert stats.collect().item() < 0.2


def _parts(method: str, workdir, **settings):
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10).eval().requires_grad_(False)
    student = create_model("resnet20", num_classes=10)
    gen = Generator(16, 3, 32, (0.5,) * 3, (0.25,) * 3, width=8)
    return create_method(method, teacher, student, gen, MethodSettings(name=method, pool_size=64, **settings), workdir), gen


def test_dfad_generator_maximises_the_students_l1_loss(tmp_path):
    method, gen = _parts("dfad", tmp_path)
    z = torch.randn(8, 16)
    images = gen(z)
    g_loss, g_logs = method.generator_loss(SynthBatch(z, images))
    s_loss, _ = method.student_loss(SynthBatch(z, images.detach()))
    assert g_loss.item() < 0 and abs(g_loss.item() + s_loss.item()) < 1e-4
    assert g_logs["g_adv"] > 0
    batch = method.student_batch(5)  # the seed's student learns from fresh generator images
    assert batch.synthesised == 5 and batch.images.shape == (5, 3, 32, 32)


def test_default_method_terms_pool_and_student_batches(tmp_path):
    method, gen = _parts("default", tmp_path)
    z = torch.randn(8, 16)
    images = gen(z)
    g_loss, logs = method.generator_loss(SynthBatch(z, images))
    g_loss.backward()
    assert logs["g_bn"] > 0 and set(logs) >= {"g_adv", "g_balance", "g_onehot", "diversity"}
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    for _ in range(3):
        method.store(gen(torch.randn(8, 16)).detach())
    assert method.pool.size == 24 and (tmp_path / "pool.u8").is_file()
    batch = method.student_batch(32)  # drawn from the pool: nothing new synthesised
    assert batch.synthesised == 0 and batch.images.shape == (32, 3, 32, 32)
    pixels = gen.to_pixels(batch.images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    s_loss, _ = method.student_loss(batch)
    assert torch.isfinite(s_loss)


def test_a_rounds_student_batches_are_labelled_ahead_in_chunks_as_drawn_one_by_one(tmp_path):
    """With `label_ahead` (CUDA's default) the teacher labels a round's k batches in chunks, one forward each,
    instead of one forward per step: the batches are the ones the step-by-step draws give, in order, with the
    teacher's logits for exactly them, and none is left over when the round ends (a checkpoint holds none).
    Where a chunk would hold a single batch, the step labels it, as with `label_ahead` off."""
    k, n = 7, 6
    rounds = {}
    for chunk in (0, 1, 2, 3, 100):  # 0: off (a CPU's default); 1: a batch per chunk; chunks of 2, 2, 2, 1; 3, 3, 1; all
        (tmp_path / str(chunk)).mkdir()
        method, gen = _parts("default", tmp_path / str(chunk), student_steps=k, label_ahead=chunk > 0)
        method.label_chunk_elements = max(1, chunk) * n * 3 * 32 * 32
        assert method.batches_per_label(n, 3 * 32 * 32) == (chunk if chunk >= 2 else 0)
        torch.manual_seed(1)
        with torch.no_grad():
            method.store(gen(torch.randn(16, 16)))
        torch.manual_seed(2)
        forwards = []
        hook = method.teacher.register_forward_hook(lambda module, args, out, forwards=forwards: forwards.append(len(args[0])))
        rounds[chunk] = [method.student_batch(n) for _ in range(k)]
        hook.remove()
        assert not method.labelled
        assert forwards == ([n * min(chunk, k - i) for i in range(0, k, chunk)] if chunk >= 2 else [])  # one per chunk
        # What the compile warm-up traces: a generator's batch (channels_last on CUDA), laid out as the pool's are.
        trial = method.label(SynthBatch(None, rounds[chunk][0].images.to(memory_format=torch.channels_last)))
        assert (trial.teacher_logits is None) == (chunk < 2)
        assert trial.images.is_contiguous() and torch.equal(trial.images, rounds[chunk][0].images)
    assert all(batch.teacher_logits is None for chunk in (0, 1) for batch in rounds[chunk])
    assert not torch.equal(rounds[0][0].images, rounds[0][1].images)
    for chunk in (1, 2, 3, 100):
        for in_step, batch in zip(rounds[0], rounds[chunk], strict=True):
            assert torch.equal(batch.images, in_step.images)
            if chunk >= 2:
                assert torch.allclose(batch.teacher_logits, method.teacher(batch.images), atol=1e-4)


def test_pool_stores_pixels_as_bytes_and_restores_its_state(tmp_path):
    pool = SyntheticPool(10, tmp_path / "a.u8")
    pixels = torch.rand(4, 3, 8, 8)
    pool.add(pixels)
    assert pool.data.dtype == torch.uint8 and torch.allclose(pool.data[:4].float() / 255, pixels, atol=0.5 / 255 + 1e-6)
    again = SyntheticPool(10, tmp_path / "a.u8")  # append-only: the file is the state, the checkpoint its size
    again.load_state_dict(pool.state_dict())
    assert again.size == 4 and torch.equal(again.data[:4], pool.data[:4])
    missing = SyntheticPool(10, tmp_path / "gone.u8")
    with pytest.raises(FileNotFoundError):
        missing.load_state_dict({**pool.state_dict(), "shape": [3, 8, 8]})


def test_pool_wraps_around_and_then_checkpoints_its_bytes(tmp_path):
    pool = SyntheticPool(5, tmp_path / "p.u8")
    pool.add(torch.arange(7.0).view(7, 1, 1, 1) / 255)
    assert pool.size == 5 and sorted(pool.data.flatten().tolist()) == [2, 3, 4, 5, 6]
    state = pool.state_dict()
    assert state["wrapped"] and state["bytes"] is not None
    pool.add(torch.full((2, 1, 1, 1), 9 / 255))  # written after the checkpoint
    restored = SyntheticPool(5, tmp_path / "p.u8")
    restored.load_state_dict(state)
    assert torch.equal(restored.data, state["bytes"])


def test_feature_repulsion_is_lower_for_spread_features_and_counts_the_bank():
    from compressor.methods.losses import feature_repulsion

    torch.manual_seed(0)
    spread = torch.eye(8, 16)  # eight orthogonal directions
    clustered = torch.ones(8, 16) + 0.01 * torch.randn(8, 16)  # eight near-duplicates

    def own_batch(f: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(f, dim=1)

    assert feature_repulsion(spread, own_batch(spread), 0.1) < feature_repulsion(clustered, own_batch(clustered), 0.1) - 5
    # The same batch scores worse once the bank already holds images like it.
    far_bank = torch.nn.functional.normalize(-torch.ones(32, 16), dim=1)
    near_bank = torch.nn.functional.normalize(spread.repeat(4, 1), dim=1)
    with_far = feature_repulsion(spread, torch.cat([own_batch(spread), far_bank]), 0.1)
    assert feature_repulsion(spread, torch.cat([own_batch(spread), near_bank]), 0.1) > with_far + 3
    # An image is not its own neighbour: rows offset... of the others are the batch itself, wherever they sit.
    shifted = torch.cat([far_bank, own_batch(spread)])
    assert torch.isclose(feature_repulsion(spread, shifted, 0.1, offset=32), with_far, atol=1e-5)
    assert feature_repulsion(spread, shifted, 0.1, offset=0) > with_far + 5  # wrong offset: each sees itself


def test_diversity_term_pushes_the_generator_and_banks_the_stored_features(tmp_path):
    method, gen = _parts("default", tmp_path, diversity_weight=1.0, diversity_bank=20)
    settings = method.settings
    z = torch.randn(8, 16)
    images = gen(z)
    loss, logs = method.generator_loss(SynthBatch(z, images))
    assert method.features.last.shape == (8, 64)  # what resnet20's classifier received for this batch
    method.settings = settings.model_copy(update={"diversity_weight": 0.0})
    without, _ = method.generator_loss(SynthBatch(z, images))
    method.settings = settings
    assert torch.isclose(loss - without, logs["g_repulsion"], atol=1e-4)  # the term is in what the generator minimises
    loss.backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    # The bank has its full shape from the start (static shapes for --compile); a mask says which rows hold images.
    assert method.feature_bank.shape == (20, 64) and not method.bank_filled.any()
    method.store(gen(torch.randn(8, 16)).detach())
    assert method.feature_bank.shape == (20, 64) and method.bank_filled.sum() == 8 and method.banked().shape == (8, 64)
    # The empty rows count for nothing: the term is what it is against the 8 stored images alone.
    _, half = method.generator_loss(SynthBatch(z, images))
    from compressor.methods.losses import feature_repulsion
    others = torch.cat([torch.nn.functional.normalize(method.features.last.float(), dim=1), method.banked()])
    assert torch.isclose(half["g_repulsion"], feature_repulsion(method.features.last, others, settings.diversity_temperature),
                         atol=1e-5)
    for _ in range(2):
        method.store(gen(torch.randn(8, 16)).detach())
    assert method.bank_filled.all()  # the latest 20 of 24 stored images
    assert torch.allclose(method.feature_bank.norm(dim=1), torch.ones(20), atol=1e-5)
    again = create_method("default", method.teacher, method.student, gen, settings, tmp_path)
    again.load_state_dict(method.state_dict())
    assert torch.equal(again.feature_bank, method.feature_bank) and torch.equal(again.bank_filled, method.bank_filled)


def test_a_teacher_without_batchnorm_or_linear_layers_is_told_which_terms_are_off(tmp_path):
    teacher = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    student = create_model("resnet20", num_classes=10)
    gen = Generator(16, 3, 32, (0.5,) * 3, (0.25,) * 3, width=8)
    method = create_method("default", teacher, student, gen, MethodSettings(pool_size=64, diversity_weight=1.0), tmp_path)
    notes = method.warnings()
    assert len(notes) == 2 and "BatchNorm" in notes[0] and "diversity term is off" in notes[1]
    z = torch.randn(8, 16)
    loss, logs = method.generator_loss(SynthBatch(z, gen(z)))  # still trains, on the terms that remain
    assert torch.isfinite(loss) and "g_repulsion" not in logs
    full, _ = _parts("default", tmp_path / "full")
    assert full.warnings() == []


_SYNCING_OPS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), bool(t), `if t:`
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.equal.default,
}


class _HostSyncs(TorchDispatchMode):
    """Records the operators that make the host wait for the GPU when they run on CUDA: reading a value, an output
    whose shape depends on the data (nonzero, a boolean mask), and a number assigned through an index. Other
    blocking copies from the host cannot happen where there is one device: CUDA's sync debug mode checks them."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        super().__init__()
        self.seen: list[str] = []
        # Not within the optimisers' updates: they are PyTorch's, one fused kernel on CUDA (its sync debug mode
        # checks them there); on a CPU, Adam reads its step count, which lives in host memory there.
        self.paused = False
        for opt in optimizers:
            opt.register_step_pre_hook(lambda *_: setattr(self, "paused", True))
            opt.register_step_post_hook(lambda *_: setattr(self, "paused", False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        masked = func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        # `t[rows, cols] = 0.5`: the number becomes a 0-d tensor on the host, which index_put_ copies to the GPU.
        number_put = func in (torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default) and args[2].dim() == 0
        if func in _SYNCING_OPS or masked or number_put:
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("label_ahead", [False, True])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU"))])
def test_a_round_of_the_default_method_never_makes_the_host_wait_for_the_gpu(tmp_path, device, label_ahead):
    """A KD step on a GPU is bound by launching kernels: the host must stay ahead of the GPU. One sync per step
    (a blocking copy of the crops' random draws, a boolean mask) makes it wait for every kernel queued, so the
    host's work and the GPU's add up instead of overlapping. Every term is on here: crops, flips, the
    diversity bank (its rows are read back each round), chunks labelled ahead or not. On CUDA, its sync debug
    mode raises at any synchronising call; everywhere, the operators that would sync there are recorded."""
    device = torch.device(device)
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10).to(device).eval().requires_grad_(False)
    student = create_model("resnet20", num_classes=10).to(device)
    gen = Generator(16, 3, 32, (0.5,) * 3, (0.25,) * 3, width=8).to(device)
    settings = MethodSettings(pool_size=64, student_steps=3, generator_steps=2, diversity_bank=16,
                              label_ahead=label_ahead)
    method = create_method("default", teacher, student, gen, settings, tmp_path)
    method.label_chunk_elements = 2 * 8 * 3 * 32 * 32  # chunks of 2 batches of 8
    cfg = RunConfig.model_validate({"teacher": {"path": "unused.pth"}, "out_dir": str(tmp_path)})
    opt_g = make_optimizer(gen.parameters(), cfg.generator_optim, device)
    opt_s = make_optimizer(student.parameters(), cfg.student_optim, device)
    g, k = settings.round

    def one_round() -> None:  # as distill.py's loop runs one (the loop adds AMP, the schedules and logging)
        student.requires_grad_(False)
        z = torch.randn(8, 16, device=device)
        for _ in range(g):
            images = gen(z)
            loss, _ = method.generator_loss(SynthBatch(z, images))
            optimizer_step(opt_g, loss, gen, cfg.grad_clip)
        method.store(images.detach())
        student.requires_grad_(True)
        for _ in range(k):
            loss, _ = method.student_loss(method.student_batch(8))
            optimizer_step(opt_s, loss, student, cfg.grad_clip)

    one_round()  # first calls allocate (pinned host blocks, the pool): the rounds after are what the run repeats
    syncs = _HostSyncs(opt_g, opt_s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
    try:
        with syncs:
            for _ in range(3):
                one_round()
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    assert syncs.seen == []
    assert method.bank_count == 16 and method.banked().shape == (16, method.features.dim)  # 4 rounds of 8: full
    assert method.pool.size == 32 and not method.labelled
