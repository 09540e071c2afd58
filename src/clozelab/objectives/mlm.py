"""Masked language modelling (SPECS §5).

The head gathers the final hidden states at the predicted positions only (never the full
[B, T, V] logits), applies dense -> activation -> LayerNorm, and decodes against the input
embedding matrix (tied) plus its own zero-initialised vocabulary bias. The loss is the sum of
token cross-entropies divided by the number of predicted tokens in the batch (HF / SpanBERT),
and exactly 0.0 (with a gradient graph) when the batch has no predicted position.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import config_error
from clozelab.model.layers import LMTransform
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class MLM(Objective):
    """Masked-LM objective; reads ``batch["mlm_labels"]`` [B, T] (-100 = no loss).

    Args:
        hidden_size: encoder width H.
        vocab_size: rows of the embedding table the decoder is tied to.
        activation: activation of the transform (HF uses the encoder's ``hidden_act``).
        layer_norm_eps: LayerNorm epsilon of the transform.
        weight: factor of this loss in the total loss.
        embedding_size: width E of the tied embedding table when it differs from H
            (factorized embeddings, ALBERT); the transform then maps H -> E.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "mlm"
    requires = ("mlm_labels",)
    instance_kinds = None
    streams = ("text", "dialogue")  # ERNIE DLM: MLM over all turns of dialogue batches too

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        weight: float = 1.0,
        embedding_size: int | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.transform = LMTransform(
            hidden_size,
            activation,
            layer_norm_eps,
            out_size=embedding_size,
            initializer_range=initializer_range,
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # (V,), the decoder's own bias

    @property
    def activation(self) -> str:
        return self.transform.activation

    def decoder_weight(self, embedding: nn.Module) -> Tensor:
        """The tied decoder matrix [V, E]: the embedding's word table itself, not a copy."""
        weight = embedding.word_embeddings.weight
        if weight.shape[0] != self.vocab_size:
            raise config_error(
                "objective.mlm.vocab_size",
                self.vocab_size,
                f"the tied embedding table has {weight.shape[0]} rows",
                "build the MLM head and the embedding with the same vocab_size",
            )
        return weight

    def logits(self, hidden: Tensor, embedding: nn.Module) -> Tensor:
        """Vocabulary logits for every position: (..., H) -> (..., V)."""
        return F.linear(self.transform(hidden), self.decoder_weight(embedding), self.bias)

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        hidden = encoder_output.last_hidden_state  # (B, T, H)
        labels = batch["mlm_labels"].reshape(-1)  # (B*T,)
        positions = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # (N,)
        n = positions.numel()
        targets = labels.index_select(0, positions)  # (N,)
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # (N, H)
        h = self.transform(picked)  # (N, H)
        # Empty N gives a sum of 0.0 that still carries the graph (finite, zero gradients).
        loss_sum, correct = tied_decoder_cross_entropy(
            h, self.decoder_weight(embedding), self.bias, targets
        )
        loss = global_mean(loss_sum / max(n, 1), n)  # the global token mean on many ranks
        acc = correct.float() / max(n, 1)
        return ObjectiveOutput(
            loss=loss, n_targets=n, logs={"mlm_loss": loss.detach(), "mlm_acc": acc}
        )


#: Logit elements decoded at once (rows per chunk = this // V). A 16 MB fp32 chunk is reused from
#: the allocator's heap, whereas one [N, V] tensor (74 MB for N=608, V=30522) is mapped afresh
#: and page-faulted on every CPU step, which costs about as much as the matmul that fills it.
CHUNK_ELEMENTS = 1 << 22


#: Vocabulary rows per block on CPU. On CPU, ``h @ W.T`` against the whole [V, H] table runs at
#: about half the speed of the same product cut into blocks of 2048 rows (measured on this
#: project's CPU with V=30522, H=256), and a [c, 2048] block stays in cache for the passes
#: that follow. Other devices decode the whole vocabulary at once.
VOCAB_BLOCK = 2048


def _matmul_into(out: Tensor, a: Tensor, b: Tensor, accumulate: bool) -> None:
    """``out = a @ b`` (or ``out += a @ b``) in place, also when ``a``/``b`` are in a lower
    precision than ``out``."""
    if a.dtype != out.dtype:
        out.add_(a @ b) if accumulate else out.copy_(a @ b)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


def _logits_into(out: Tensor, h: Tensor, w: Tensor, b: Tensor | None) -> None:
    """``out = h @ w.T + b`` (no bias when ``b`` is None) into the [c, k] block ``out``."""
    if h.dtype != out.dtype:
        out.copy_(F.linear(h, w, b))
    elif b is None:
        torch.mm(h, w.t(), out=out)
    else:
        torch.addmm(b, h, w.t(), out=out)


def tied_decoder_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sum_i CE(hidden_i @ weight.T + bias, targets_i), #argmax hits)`` without [N, V] tensors.

    Equal to ``F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")`` in
    value and gradient (``bias`` None: no bias, e.g. T5). Rows are decoded in chunks (and, on
    CPU, vocabulary blocks); when a gradient is needed, each chunk's gradient (softmax minus
    one-hot) is applied to the inputs at once, so no logits or probabilities outlive their chunk
    and backward only scales the stored gradients. A row counts as a hit when its target's logit
    is the row's maximum.
    """
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, needs_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked linear + cross-entropy whose forward also computes the input gradients.

    A chunk's logits live in one flat buffer cut into contiguous [c, block] views (one per
    vocabulary block), so each target's logit is read back from it with one gather: the loss's
    target term and the hit count use the very numbers the softmax sums."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, needs_grad):
        device = hidden.device.type
        # Under autocast the matmuls run in the autocast dtype; softmax and sums in >= fp32.
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = hidden.dtype
        acc = torch.promote_types(dtype, torch.float32)  # softmax, sums and accumulators
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)  # (V, E)
            b = bias.to(dtype) if bias is not None else None  # (V,)
            n, v = hidden.shape[0], w.shape[0]
            size = VOCAB_BLOCK if device == "cpu" else v
            spans = [(j, min(j + size, v)) for j in range(0, v, size)]
            loss = torch.zeros((), dtype=acc, device=hidden.device)
            correct = torch.zeros((), dtype=torch.long, device=hidden.device)
            grad_h = grad_w = grad_b = None
            if needs_grad:
                grad_h = torch.empty(hidden.shape, dtype=acc, device=hidden.device)  # (N, E)
                # (V, E): the first chunk writes it, the others add (zeros only if no chunk)
                grad_w = (torch.empty_like if n else torch.zeros_like)(weight, dtype=acc)
                if bias is not None:
                    grad_b = torch.zeros(v, dtype=acc, device=hidden.device)  # (V,)
            rows = max(1, CHUNK_ELEMENTS // max(v, 1))
            flat = torch.empty(min(rows, n) * v, dtype=acc, device=hidden.device)
            for start in range(0, n, rows):
                h = hidden[start : start + rows].to(dtype)  # (c, E)
                t = targets[start : start + rows]  # (c,)
                c = h.shape[0]
                blocks = [flat[c * j : c * k].view(c, k - j) for j, k in spans]
                for (j, k), block in zip(spans, blocks):
                    _logits_into(block, h, w[j:k], None if b is None else b[j:k])
                # the target logit of row r, in the block of columns j..k holding t[r]
                first = torch.div(t, size, rounding_mode="floor") * size
                width = (first + size).clamp_max(v) - first
                where = c * first + torch.arange(c, device=t.device) * width + (t - first)
                target_logit = flat[where]  # (c,)
                top = torch.stack([block.amax(1) for block in blocks]).amax(0)  # (c,)
                correct += (target_logit == top).sum()
                total = torch.zeros_like(top)  # (c,): sum of exp(logit - top)
                for block in blocks:
                    total += block.sub_(top[:, None]).exp_().sum(1)  # block becomes exp, in place
                loss += (top + total.log() - target_logit).sum()
                if not needs_grad:
                    continue
                # d loss / d logits = softmax - onehot. The softmax part is exp / total: the
                # 1/total goes onto the small operand of each product, the one-hot part is -W[t],
                # -h and -1 scattered on the targets' rows.
                inv = total.reciprocal()  # (c,)
                scaled_h = (h.to(acc) * inv[:, None]).to(dtype)  # (c, E)
                g_h = grad_h[start : start + c]  # (c, E)
                for i, ((j, k), block) in enumerate(zip(spans, blocks)):
                    e = block.to(dtype)  # (c, block)
                    _matmul_into(g_h, e, w[j:k], accumulate=i > 0)
                    _matmul_into(grad_w[j:k], e.t(), scaled_h, accumulate=start > 0)
                    if grad_b is not None:
                        grad_b[j:k] += block.t() @ inv
                g_h.mul_(inv[:, None]).sub_(w[t].to(acc))
                grad_w.index_add_(0, t, h.to(acc), alpha=-1.0)
                if grad_b is not None:
                    grad_b.index_add_(0, t, torch.ones_like(inv), alpha=-1.0)
        if needs_grad:
            ctx.save_for_backward(grad_h, grad_w, grad_b)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_correct):
        grads = tuple(
            None if g is None else (g * grad_loss).to(dtype)
            for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)
        )
        return (*grads, None, None)
