"""Gradient clipping with the fused AdamW under mixed precision (training/fused_clipping.py).

Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients; with
``optim.fused=true`` (the default) every bf16-mixed run with ``trainer.gradient_clip_val`` failed
at its first step. These runs clip hard (0.01) so that clipping decides the update."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from clozelab.pretrain import pretrain
from clozelab.training.fused_clipping import clip_fused_under_amp

RUN = ("trainer.max_steps=2", "initial_validation=false", "trainer.precision=bf16-mixed",
       "trainer.gradient_clip_val=0.01", "trainer.val_check_interval=2")  # fmt: skip


def _weights(compose_pretrain, tmp_path, fused: bool) -> dict[str, torch.Tensor]:
    out = tmp_path / f"fused_{fused}"
    cfg = compose_pretrain(*RUN, f"optim.fused={str(fused).lower()}", f"paths.output_dir={out}")
    assert pretrain(cfg)["status"] == "completed"
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu")["state_dict"]


def test_bf16_mixed_run_clips_the_fused_optimizer_as_the_unfused_one(compose_pretrain, tmp_path):
    fused = _weights(compose_pretrain, tmp_path, True)
    unfused = _weights(compose_pretrain, tmp_path, False)
    assert fused.keys() == unfused.keys()
    for key in fused:  # the two kernels round the update differently, nothing more
        torch.testing.assert_close(fused[key], unfused[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_fp16_scaler_unscales_before_the_clip_and_the_fused_step_knows(algorithm):
    """Under a loss scale the gradients are unscaled, then clipped; the fused step then takes the
    same update as an unfused AdamW stepped by Lightning's plugin (unscale, clip, step)."""
    torch.manual_seed(0)
    start, target = torch.randn(4, 3), torch.randn(4, 3) * 5
    params = {}
    for fused in (True, False):
        param = torch.nn.Parameter(start.clone())
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        opt = torch.optim.AdamW([param], lr=0.1, fused=fused, foreach=False if fused else None)
        scaler.scale(((param - target) ** 2).sum()).backward()  # gradients x 1024
        if fused:
            assert clip_fused_under_amp(plugin, opt, 0.5, algorithm)
        else:
            scaler.unscale_(opt)
            plugin.clip_gradients(opt, 0.5, algorithm)
        clipped = param.grad.clone()
        scaler.step(opt)
        scaler.update()
        params[fused] = (clipped, param.detach().clone(), scaler.get_scale())
    (clip_f, p_f, s_f), (clip_u, p_u, s_u) = params[True], params[False]
    torch.testing.assert_close(clip_f, clip_u)
    torch.testing.assert_close(p_f, p_u)
    assert s_f == s_u
    if algorithm == "norm":
        assert clip_f.norm() <= 0.5 + 1e-5
    else:
        assert clip_f.abs().max() <= 0.5


def test_other_optimizers_and_precisions_are_left_to_lightning():
    param = torch.nn.Parameter(torch.zeros(2))
    fused = torch.optim.AdamW([param], fused=True)
    assert not clip_fused_under_amp(object(), fused, 1.0, "norm")  # 32-true / bf16-true
    plugin = MixedPrecision("bf16-mixed", "cpu")
    assert not clip_fused_under_amp(plugin, torch.optim.AdamW([param], fused=False), 1.0, "norm")
