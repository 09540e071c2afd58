"""XLNet's two-stream encoder: what each stream sees, and parity with HF XLNetLMHeadModel."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.permutation import PermutationTargets
from clozelab.model.char_cnn import WordEmbeddings
from clozelab.model.hf_xlnet import (
    from_hf_xlnet_state_dict,
    kwargs_from_xlnet_config,
    to_hf_xlnet_state_dict,
    xlnet_config_dict,
)
from clozelab.model.xlnet import XLNetEncoder, rel_shift
from clozelab.objectives.plm import PermutationLM

transformers = pytest.importorskip("transformers")

V, H, L, A, FF = 99, 32, 2, 4, 37
TOL = 1e-4
HF_CONFIG = dict(
    vocab_size=V,
    d_model=H,
    n_layer=L,
    n_head=A,
    d_inner=FF,
    ff_activation="gelu",
    mem_len=None,
    dropout=0.1,
    layer_norm_eps=1e-12,
)


def hf_model(**extra):
    torch.manual_seed(0)
    return transformers.XLNetLMHeadModel(transformers.XLNetConfig(**{**HF_CONFIG, **extra})).eval()


def ours(seed: int = 1):
    torch.manual_seed(seed)
    kw = kwargs_from_xlnet_config({"model_type": "xlnet", **HF_CONFIG})
    parts = (
        WordEmbeddings(**kw["embedding"]),
        XLNetEncoder(**kw["encoder"]),
        PermutationLM(**kw["plm"]),
    )
    return tuple(p.eval() for p in parts)


def plm_batch(b: int = 3, t: int = 12, seed: int = 0, pad_last: int = 3):
    """Token ids with [CLS]/[SEP]-like specials, segments, padding, and the PLM targets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, t), generator=g)
    special = torch.zeros(b, t, dtype=torch.long)
    special[:, 0] = special[:, t // 2] = 1
    mask = torch.ones(b, t, dtype=torch.long)
    mask[-1, t - pad_last :] = 0
    special[-1, t - pad_last - 1] = 1
    types = (torch.arange(t) > t // 2).long().expand(b, t).clone()
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "special_tokens_mask": special,
        "token_type_ids": types,
    }
    return PermutationTargets(k=3)(batch, g)


def run_ours(emb, enc, batch, **kw):
    return enc(
        emb(batch["input_ids"]),
        batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        **kw,
    )


# ---------------------------------------------------------------------------------- streams


def order_of(batch) -> torch.Tensor:
    """Place in the factorisation order per position (0 = non-predicted), from the targets."""
    mapping = batch["target_mapping"]
    perm = batch["perm_mask"]
    predicted = mapping.sum(1) > 0  # (B, T)
    # a predicted position's place = 1 + how many predicted positions it may see
    seen = (~perm & predicted[:, None, :]).sum(-1)
    return torch.where(predicted, seen + 1, 0)


def dependence(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """[rows, T] bool: does output row r (of batch row 0) change with input position j."""
    rows = []
    probe = torch.randn(output.shape[-1], generator=torch.Generator().manual_seed(0))
    for r in range(output.shape[1]):  # (a plain sum of a LayerNorm output is constant)
        (grad,) = torch.autograd.grad(output[0, r] @ probe, inputs, retain_graph=True)
        rows.append(grad[0].abs().sum(-1) > 0)
    return torch.stack(rows)


def test_content_stream_at_z_t_sees_exactly_z_le_t():
    emb, enc, _ = ours()
    batch = plm_batch(b=1, pad_last=0)
    hidden = emb(batch["input_ids"]).detach().requires_grad_(True)
    out = enc(
        hidden,
        batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        perm_mask=batch["perm_mask"],
        target_mapping=batch["target_mapping"],
    )
    order = order_of(batch)[0]
    expected = order[None, :] <= order[:, None]  # i sees j iff z-place of j <= that of i
    assert torch.equal(dependence(out.last_hidden_state, hidden), expected)


def test_query_stream_never_sees_its_own_content():
    emb, enc, _ = ours()
    batch = plm_batch(b=1, pad_last=0)
    hidden = emb(batch["input_ids"]).detach().requires_grad_(True)
    out = enc(
        hidden,
        batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        perm_mask=batch["perm_mask"],
        target_mapping=batch["target_mapping"],
    )
    order = order_of(batch)[0]
    positions = batch["target_mapping"][0].argmax(-1)  # (M,)
    seen = dependence(out.query_hidden_state, hidden)  # (M, T)
    expected = order[None, :] < order[positions][:, None]  # strictly before it in the order
    assert torch.equal(seen, expected)
    assert not seen[torch.arange(len(positions)), positions].any()  # never its own content
    # and a target's own token does not move its prediction at all
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, positions[0]] = (changed["input_ids"][0, positions[0]] + 1) % V
    with torch.no_grad():
        a = run_ours(
            emb, enc, batch, perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"]
        ).query_hidden_state
        b = run_ours(
            emb, enc, changed, perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"]
        ).query_hidden_state
    first = int(order[positions].argmin())  # ... nor any other prediction before it
    assert torch.allclose(a[0, positions == positions[0]], b[0, positions == positions[0]])
    assert torch.allclose(a[0, first], b[0, first])


def test_rel_shift_aligns_scores_with_relative_distance():
    q, k = 4, 6  # 2 memory positions + 4 current
    p = k + q
    scores = torch.arange(p, dtype=torch.float32).expand(1, 1, q, p)  # value = index m
    shifted = rel_shift(scores.contiguous(), k)  # m = j + q - i  ->  distance k - m = i + 2 - j
    i, j = torch.meshgrid(torch.arange(q), torch.arange(k), indexing="ij")
    assert torch.equal(shifted[0, 0], (j + q - i).float())


def test_without_perm_mask_the_content_stream_is_bidirectional():
    emb, enc, _ = ours()
    batch = plm_batch(b=1, pad_last=0)
    hidden = emb(batch["input_ids"]).detach().requires_grad_(True)
    out = enc(hidden, None, token_type_ids=batch["token_type_ids"])
    assert out.query_hidden_state is None
    assert dependence(out.last_hidden_state, hidden).all()


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("padding", [0, 3])
def test_hf_xlnet_import_gives_the_same_logits(padding):
    hf = hf_model()
    emb, enc, plm = ours()
    report = from_hf_xlnet_state_dict(hf.state_dict(), emb, enc, plm.bias)
    assert report == {"missing": [], "unexpected": []}
    batch = plm_batch(pad_last=padding)
    kw = {"perm_mask": batch["perm_mask"].float(), "target_mapping": batch["target_mapping"]}
    with torch.no_grad():
        ref = hf(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            **kw,
        ).logits
        got = plm.logits(run_ours(emb, enc, batch, **kw).query_hidden_state, emb)
        assert (ref - got).abs().max() < TOL
        # fine-tuning view: no perm mask, no targets: the content stream = XLNetModel's output
        ref_h = hf.transformer(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        got_h = run_ours(emb, enc, batch).last_hidden_state
        assert (ref_h - got_h).abs().max() < TOL


def test_plm_loss_equals_hf_loss():
    hf = hf_model()
    emb, enc, plm = ours()
    from_hf_xlnet_state_dict(hf.state_dict(), emb, enc, plm.bias, strict=True)
    batch = plm_batch()
    with torch.no_grad():
        ref = hf(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            perm_mask=batch["perm_mask"].float(),
            target_mapping=batch["target_mapping"],
            labels=batch["plm_labels"],
        ).loss
        out = run_ours(
            emb, enc, batch, perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"]
        )
        loss = plm(out, batch, emb).loss
    assert abs(float(ref) - float(loss)) < TOL


def test_export_loads_into_hf_without_missing_keys(tmp_path):
    emb, enc, plm = ours(seed=3)
    with torch.no_grad():
        plm.bias.normal_()
    config = transformers.XLNetConfig(**xlnet_config_dict(emb, enc))
    hf = transformers.XLNetLMHeadModel(config).eval()
    result = hf.load_state_dict(to_hf_xlnet_state_dict(emb, enc, plm.bias), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    hf.save_pretrained(tmp_path)
    loaded, info = transformers.XLNetLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = plm_batch(seed=4)
    kw = {"perm_mask": batch["perm_mask"].float(), "target_mapping": batch["target_mapping"]}
    with torch.no_grad():
        ref = loaded.eval()(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            **kw,
        ).logits
        got = plm.logits(run_ours(emb, enc, batch, **kw).query_hidden_state, emb)
    assert (ref - got).abs().max() < TOL


def test_memory_matches_hf_mems():
    hf = hf_model(mem_len=5)
    kw = kwargs_from_xlnet_config({"model_type": "xlnet", **HF_CONFIG, "mem_len": 5})
    emb, enc = WordEmbeddings(**kw["embedding"]).eval(), XLNetEncoder(**kw["encoder"]).eval()
    from_hf_xlnet_state_dict(hf.state_dict(), emb, enc)
    first, second = plm_batch(b=2, pad_last=0, seed=5), plm_batch(b=2, pad_last=0, seed=6)
    with torch.no_grad():
        ref1 = hf.transformer(
            first["input_ids"], token_type_ids=first["token_type_ids"], use_mems=True
        )
        ref2 = hf.transformer(
            second["input_ids"],
            token_type_ids=second["token_type_ids"],
            mems=ref1.mems,
            use_mems=True,
        )
        out1 = run_ours(emb, enc, dict(first, attention_mask=None))
        out2 = run_ours(emb, enc, dict(second, attention_mask=None), mems=out1.mems)
    for a, b in zip(ref1.mems, out1.mems):
        assert (a.transpose(0, 1) - b).abs().max() < TOL
    assert (ref2.last_hidden_state - out2.last_hidden_state).abs().max() < TOL


def test_bad_config_is_refused_with_the_key():
    with pytest.raises(ClozelabError, match="model.hidden_size"):
        XLNetEncoder(30, 2, 4, 64)
    with pytest.raises(ClozelabError, match="encoder.mem_len"):
        XLNetEncoder(32, 2, 4, 64, mem_len=-1)
    with pytest.raises(ClozelabError, match="attn_type"):
        kwargs_from_xlnet_config({"model_type": "xlnet", **HF_CONFIG, "attn_type": "uni"})


def test_training_attention_path_computes_the_same_math(monkeypatch):
    """With attention dropout on CPU the scores go through baddbmm + softmax instead of SDPA;
    with the dropout itself switched off both paths give the same streams."""
    import clozelab.model.xlnet as xlnet
    from clozelab.model.dropout import Dropout

    emb, enc, _ = ours()
    batch = plm_batch()
    kw = {"perm_mask": batch["perm_mask"], "target_mapping": batch["target_mapping"]}
    with torch.no_grad():
        ref = run_ours(emb, enc, batch, **kw)
    monkeypatch.setattr(xlnet, "dropout", lambda x, p: x)
    for module in enc.modules():
        if isinstance(module, Dropout):
            module.p = 0.0
    enc.train()
    assert enc.layers[0].attention.attention_dropout > 0
    with torch.no_grad():
        got = run_ours(emb, enc, batch, **kw)
    assert (ref.last_hidden_state - got.last_hidden_state).abs().max() < TOL
    assert (ref.query_hidden_state - got.query_hidden_state).abs().max() < TOL


@pytest.mark.parametrize("with_mems", [False, True])
def test_query_stream_only_output_skips_the_last_content_layer_exactly(with_mems):
    """``content_output=False`` (PLM training: nothing reads the content stream's output): the
    query stream and every gradient are those of the full forward; ``last_hidden_state`` is None
    and the last layer's content-only weights get no gradient."""
    emb, enc, plm = ours()
    batch = plm_batch()
    kw = {"perm_mask": batch["perm_mask"], "target_mapping": batch["target_mapping"]}
    if with_mems:
        kw["mems"] = [torch.randn(3, 4, H, generator=torch.Generator().manual_seed(i))
                      for i in range(L)]  # fmt: skip
    grads = []
    for content in (True, False):
        emb.zero_grad(set_to_none=True), enc.zero_grad(set_to_none=True)
        out = run_ours(emb, enc, batch, content_output=content, **kw)
        assert (out.last_hidden_state is None) == (not content)
        plm(out, batch, emb).loss.backward()
        grads.append({n: p.grad for n, p in [*emb.named_parameters(), *enc.named_parameters()]})
        if content:
            ref = out.query_hidden_state.detach()
    assert (ref - out.query_hidden_state).abs().max() < TOL
    full, skipped = grads
    for name, grad in full.items():
        if skipped[name] is None:  # only the last layer's content-stream-only weights
            assert name.startswith(f"layers.{L - 1}.") and grad.abs().max() < TOL, name
        else:
            assert (grad - skipped[name]).abs().max() < TOL, name
