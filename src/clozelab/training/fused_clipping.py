"""``trainer.gradient_clip_val`` for a fused optimizer under Lightning's mixed precision.

A fused AdamW (``optim.fused=true``, the default) unscales fp16 gradients inside its step, so
Lightning's ``MixedPrecision`` plugin refuses to clip its gradients ("does not allow for gradient
clipping ... Are you using a 'fused' optimizer?"): every ``trainer.precision=bf16-mixed`` run
(``trainer=gpu``'s default) with gradient clipping (1.0 by default) failed at its first step.
bf16 has no loss scale: its gradients are clipped as they are, exactly as the plugin clips an
unfused optimizer's. Under fp16 the scaler unscales them first; the fused step then sees that
they are unscaled and, as for an unfused optimizer, is skipped when one is not finite.
"""

from __future__ import annotations

from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.utilities.enums import GradClipAlgorithmType


def clip_fused_under_amp(plugin, optimizer, clip_val, algorithm) -> bool:
    """Clip ``optimizer``'s gradients when it is fused and ``plugin`` is mixed precision; False
    (nothing done) otherwise, where Lightning's own clipping applies."""
    fused = getattr(optimizer, "_step_supports_amp_scaling", False)
    if not (fused and isinstance(plugin, MixedPrecision)):
        return False
    if not clip_val or clip_val <= 0:
        return True  # no clipping: the step unscales as usual
    if plugin.scaler is not None:
        plugin.scaler.unscale_(optimizer)
    algorithm = GradClipAlgorithmType(algorithm or GradClipAlgorithmType.NORM)
    Precision.clip_gradients(plugin, optimizer, clip_val, algorithm)  # the unfused path's clip
    return True


__all__ = ["clip_fused_under_amp"]
