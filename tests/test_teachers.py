import pickle
import sys
import textwrap

import pytest
import torch

from compressor.errors import CompressorError
from compressor.models import create_model
from compressor.teachers import load_teacher
from tests.helpers import randomise_bn


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "arch, classes, channels, layout",
    [
        ("resnet20", 10, 3, "bare"),
        ("cifar_resnet18", 100, 3, "state_dict+module"),
        ("wrn_16_1", 10, 3, "model"),
        ("small_cnn", 10, 1, "net"),
        ("resnet18", 7, 3, "bare"),
        ("mobilenet_v2", 5, 3, "state_dict"),
    ],
)
def test_detects_architecture_classes_and_channels(tmp_path, arch, classes, channels, layout):
    model = create_model(arch, num_classes=classes, in_channels=channels)
    state = model.state_dict()
    if "module" in layout:
        state = {f"module.{k}": v for k, v in state.items()}
    key = layout.split("+")[0]
    torch.save(state if key == "bare" else {key: state, "epoch": torch.tensor(3)}, tmp_path / "t.pth")
    loaded = load_teacher(tmp_path / "t.pth")
    assert (loaded.arch, loaded.num_classes, loaded.in_channels) == (arch, classes, channels)
    assert _same_weights(loaded.model, model)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_arch_override_and_mismatch(tmp_path):
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "t.pth")
    assert load_teacher(tmp_path / "t.pth", arch="resnet20").arch == "resnet20"
    with pytest.raises(CompressorError, match="does not fit architecture resnet32"):
        load_teacher(tmp_path / "t.pth", arch="resnet32")
    with pytest.raises(CompressorError, match="unknown architecture"):
        load_teacher(tmp_path / "t.pth", arch="no_such_net")


def test_a_program_of_a_registry_architecture_is_rebuilt_with_its_batchnorm_layers(tmp_path):
    """No --trust-code: a .pt2 is operators and raw weights. Its weights keep their names, so the teacher is the
    registry's module, with the BatchNorm layers the statistics term hooks."""
    from export.program import export_program, save_program

    model = randomise_bn(create_model("resnet20", num_classes=10))
    save_program(export_program(model, (3, 32, 32)), tmp_path / "t.pt2")
    loaded = load_teacher(tmp_path / "t.pt2")
    assert (loaded.arch, loaded.source, loaded.num_classes, loaded.in_channels) == ("resnet20", "program", 10, 3)
    assert _same_weights(loaded.model, model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_a_program_of_an_unknown_architecture_runs_as_its_graph(tmp_path):
    from export.program import export_program, save_program

    model = randomise_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4)))
    save_program(export_program(model, (3, 16, 16)), tmp_path / "t.pt2")
    loaded = load_teacher(tmp_path / "t.pt2")
    assert (loaded.arch, loaded.source, loaded.num_classes, loaded.in_channels) == ("program", "program", 4, 3)
    loaded.model.train()  # a graph refuses mode switches; the teacher takes them and stays what was exported
    loaded.model.eval()
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_torchscript_archive_is_accepted_with_trust_and_recognised(tmp_path):
    model = create_model("resnet20", num_classes=10).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "t.pt")
    with pytest.raises(CompressorError, match="--trust-code"):
        load_teacher(tmp_path / "t.pt")
    loaded = load_teacher(tmp_path / "t.pt", trust_code=True)
    assert loaded.source == "torchscript" and loaded.arch == "resnet20"
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-5)


def test_custom_architecture_from_user_code(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def tiny(num_classes):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_nets", None)
    import my_nets

    torch.save(my_nets.tiny(6).state_dict(), tmp_path / "t.pth")
    with pytest.raises(CompressorError, match="cannot recognise"):
        load_teacher(tmp_path / "t.pth")
    loaded = load_teacher(tmp_path / "t.pth", arch="my_nets:tiny")
    assert loaded.num_classes == 6


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": _Exploit(str(marker))}, f)
    with pytest.raises(CompressorError, match="refusing to load"):
        load_teacher(tmp_path / "evil.pth")
    assert not marker.exists()
    # A torch.save'd file with a code-carrying object is refused the same way.
    torch.save({"model": _Exploit(str(marker))}, tmp_path / "evil2.pth")
    with pytest.raises(CompressorError, match="refusing to load"):
        load_teacher(tmp_path / "evil2.pth")
    assert not marker.exists()


def test_pickled_whole_module_is_refused(tmp_path):
    torch.save(create_model("resnet20", num_classes=10), tmp_path / "whole.pt")
    with pytest.raises(CompressorError, match="pickled Python object"):
        load_teacher(tmp_path / "whole.pt")


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CompressorError, match="not found"):
        load_teacher(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CompressorError):
        load_teacher(tmp_path / "junk.pth")


def test_safetensors_teacher_loads_as_data_and_is_detected(tmp_path):
    from safetensors.torch import save_file

    model = create_model("resnet20", num_classes=10).eval()
    save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
    loaded = load_teacher(tmp_path / "t.safetensors")
    assert loaded.arch == "resnet20" and loaded.source == "state_dict"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "t.safetensors").read_bytes()[:200])
    with pytest.raises(CompressorError, match="cannot read safetensors"):
        load_teacher(broken)


def test_torchscript_payload_never_runs_without_trust(tmp_path):
    from tests.payloads import torchscript_payload

    (tmp_path / "evil.pt").write_bytes(torchscript_payload())
    with pytest.raises(CompressorError, match="TorchScript archive") as refused:
        load_teacher(tmp_path / "evil.pt")
    assert "payload ran" not in str(refused.value)
    with pytest.raises(Exception, match="payload ran"):  # the control: loading it really does run its code
        torch.jit.load(str(tmp_path / "evil.pt"))


def test_an_archive_that_would_inflate_past_the_limit_is_refused_from_its_directory(tmp_path):
    """A small upload whose zip member unpacks to 64 MiB: refused before torch.load inflates anything."""
    import zipfile

    from compressor.teachers import check_archive_size

    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CompressorError, match="unpacks to 67,108,864 bytes"):
        check_archive_size(bomb, 10 << 20)
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "t.pth")
    check_archive_size(tmp_path / "t.pth", 10 << 20)  # a real checkpoint under the limit passes
