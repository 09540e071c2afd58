"""The AdamW every training path builds (``optim=adamw``, fine-tuning, multi-task, the bench):
fused, the same updates as torch's default multi-tensor AdamW, no decay on biases/norms."""

from __future__ import annotations

import hydra
import torch
from torch import nn

from clozelab.training.optim import adamw, parameter_groups
from clozelab.training.timing import adamw as bench_adamw
from tests.helpers import compose_config


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))


def _steps(optimizer_factory, steps: int = 5) -> list[torch.Tensor]:
    model = _model()
    optimizer = optimizer_factory(parameter_groups(model, 0.01))
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()]


def test_configured_adamw_is_fused_and_updates_like_the_default():
    cfg = compose_config("optim=adamw")
    assert cfg.optim.fused is True
    factory = hydra.utils.instantiate(cfg.optim)
    configured = factory(parameter_groups(_model(), 0.01))
    assert configured.defaults["fused"] is True
    fused = _steps(lambda groups: adamw(groups, 1e-2, eps=1e-6))
    default = _steps(lambda groups: torch.optim.AdamW(groups, lr=1e-2, eps=1e-6))
    for a, b in zip(fused, default, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused[0], _model()[0].weight.detach())  # it did train


def test_helpers_drop_empty_groups_and_the_bench_uses_the_same_optimizer():
    model = nn.Linear(4, 4, bias=False)  # no 1-d parameter: the no-decay group is empty
    optimizer = adamw(parameter_groups(model, 0.01), 1e-3)
    assert len(optimizer.param_groups) == 1 and optimizer.defaults["fused"] is True
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert bench_adamw(model, 1e-3).defaults["fused"] is True  # ours and HF alike in a bench
