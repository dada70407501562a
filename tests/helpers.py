"""Small helpers several test modules share."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics, so that parity and loading are checked on non-trivial normalisation too."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def main_in_process(main: Callable[[list[str]], int], args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """(exit status, stderr) of a CLI's `main` called here: the same code as `python -m ...` less the 3 s of
    imports a new process pays, for batteries of bad inputs. argparse's own refusals exit through SystemExit.
    What only a real process shows (a traceback at exit, signals) keeps its own subprocess tests."""
    capsys.readouterr()
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err
