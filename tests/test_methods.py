import math

import torch
import torch.nn as nn

from compressor.config import MethodSettings
from compressor.generator import Generator
from compressor.methods import SynthBatch, create_method
from compressor.methods.default import ReplayPool
from compressor.methods.losses import BatchNormStatistics, class_balance, kl_at_temperature
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


def _parts(method: str):
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10).eval().requires_grad_(False)
    student = create_model("resnet20", num_classes=10)
    gen = Generator(16, 3, 32, (0.5,) * 3, (0.25,) * 3, width=8)
    return create_method(method, teacher, student, gen, MethodSettings(name=method, replay_size=64)), gen


def test_dfad_generator_maximises_the_students_l1_loss():
    method, gen = _parts("dfad")
    z = torch.randn(8, 16)
    images = gen(z)
    g_loss, g_logs = method.generator_loss(SynthBatch(z, images))
    s_loss, _ = method.student_loss(SynthBatch(z, images.detach()))
    assert g_loss.item() < 0 and abs(g_loss.item() + s_loss.item()) < 1e-4
    assert g_logs["g_adv"] > 0


def test_default_method_terms_and_replay_pool_state():
    method, gen = _parts("default")
    z = torch.randn(8, 16)
    g_loss, logs = method.generator_loss(SynthBatch(z, gen(z)))
    g_loss.backward()
    assert logs["g_bn"] > 0 and set(logs) >= {"g_adv", "g_balance", "g_onehot", "diversity"}
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)
    for _ in range(3):
        s_loss, _ = method.student_loss(SynthBatch(z, gen(z).detach()))
        assert torch.isfinite(s_loss)
    assert method.pool.size == 24
    state = method.state_dict()
    pool = ReplayPool(64)
    pool.load_state_dict(state["pool"], torch.device("cpu"))
    assert pool.size == 24 and torch.equal(pool.images[:24], method.pool.images[:24])


def test_replay_pool_wraps_around():
    pool = ReplayPool(5)
    pool.add(torch.arange(7.0).view(7, 1))
    assert pool.size == 5 and sorted(pool.images.flatten().tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
