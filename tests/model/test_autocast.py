"""bf16 autocast (trainer.precision=bf16-mixed): encoder and objectives are autocast-safe.

CPU autocast stands in for CUDA's here; the matmuls run in bf16, the MLM decoder's softmax and
sums in fp32 (``clozelab.objectives.mlm``), and the loss stays close to the fp32 loss.
"""

from __future__ import annotations

import pytest
import torch

from clozelab.core.batch import Batch
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.objectives.mlm import MLM, tied_decoder_cross_entropy
from clozelab.objectives.nsp import NSP
from clozelab.training.module import PretrainModule

V, H = 300, 32


def make_module(**encoder_kw) -> PretrainModule:
    torch.manual_seed(0)
    embedding = BertEmbeddings(V, H, max_position_embeddings=64, dropout=0.0)  # same both runs
    encoder = TransformerEncoder(H, 2, 4, 64, dropout=0.0, attention_dropout=0.0, **encoder_kw)
    return PretrainModule(embedding, encoder, {"mlm": MLM(H, V), "nsp": NSP(H)}, optimizer=None)


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (6, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:], mask[2, 5:], mask[4, 9:] = 0, 0, 0
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, -100)
    nsp = torch.tensor([0, 1, 0, 1, 1, 0])
    return Batch(
        input_ids=ids * mask,
        attention_mask=mask,
        token_type_ids=ids * 0,
        mlm_labels=labels,
        next_sentence_label=nsp,
    )


def loss_and_grads(module: PretrainModule, bf16: bool):
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module(make_batch())[0]
    loss.backward()
    return loss, {k: p.grad for k, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "encoder_kw",
    [{}, {"unpad": True}, {"unpad": True, "unpad_attention": "nested"},
     {"attention_backend": "flash"}],
    ids=["padded", "unpad", "unpad-nested", "flash"],
)  # fmt: skip
def test_bf16_forward_backward_is_finite_and_close_to_fp32(encoder_kw):
    module = make_module(**encoder_kw).train()
    ref, ref_grads = loss_and_grads(module, bf16=False)
    loss, grads = loss_and_grads(module, bf16=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) <= 2e-3 * ref.item()  # bf16 keeps ~3 digits
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), key
    g, r = (torch.cat([d[k].flatten() for k in sorted(d)]) for d in (grads, ref_grads))
    assert torch.nn.functional.cosine_similarity(g, r, dim=0) > 0.999


def test_fused_decoder_cross_entropy_accumulates_in_fp32():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.1).requires_grad_()
    bias = torch.zeros(V, requires_grad=True)
    targets = torch.randint(0, V, (7,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = tied_decoder_cross_entropy(hidden, weight, bias, targets)
    assert loss.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t() + bias, targets, reduction="sum")
    assert abs(loss.item() - ref.item()) <= 0.01 * ref.item()
    loss.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
