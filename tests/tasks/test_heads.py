"""CRF against brute force; the scalar mix starts as the average; frozen features stay frozen;
[CLS] and mean pooling."""

from __future__ import annotations

import itertools

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.model.layer_pool import LayerAverage, ScalarMix
from clozelab.tasks.classification import ClassificationModel
from clozelab.tasks.tagging import CRF


def _brute(crf, em, length):
    scores = {}
    for path in itertools.product(range(em.shape[-1]), repeat=length):
        s = crf.start[path[0]] + em[0, path[0]] + crf.end[path[-1]]
        s = s + sum(
            crf.transitions[a, b] + em[i + 1, b]
            for i, (a, b) in enumerate(itertools.pairwise(path))
        )
        scores[path] = s
    return scores


def test_crf_nll_and_viterbi_match_brute_force():
    torch.manual_seed(0)
    crf = CRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    em = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    tags = torch.tensor([[0, 2, 1, 1], [2, 2, 0, -100]])
    total = 0.0
    decoded = crf.decode(em, mask)
    for row, length in enumerate((4, 3)):
        scores = _brute(crf, em[row], length)
        log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
        gold = tuple(tags[row, :length].tolist())
        total += float(log_z - scores[gold])
        assert tuple(decoded[row]) == max(scores, key=lambda k: float(scores[k]))
    assert (
        float(crf.nll(em, tags, mask)) == torch.tensor(total / 2).item()
        or abs(float(crf.nll(em, tags, mask)) - total / 2) < 1e-4
    )


def test_scalar_mix_starts_as_the_average_of_the_last_layers():
    states = tuple(torch.full((1, 2, 3), float(i)) for i in range(6))
    mixed = ScalarMix(4)(states)
    assert torch.allclose(mixed, torch.full((1, 2, 3), (2 + 3 + 4 + 5) / 4))


def test_average_of_the_last_four_layers_by_hand():
    """The seeds' feature-based recipe: (h_{L-3} + h_{L-2} + h_{L-1} + h_L) / 4, no parameters."""
    g = torch.Generator().manual_seed(0)
    states = tuple(torch.randn(2, 3, 4, generator=g) for _ in range(6))  # embeddings + 5 layers
    by_hand = (states[2] + states[3] + states[4] + states[5]) / 4
    average = LayerAverage(4)
    assert torch.allclose(average(states), by_hand, atol=1e-7)
    assert list(average.parameters()) == []
    assert torch.allclose(ScalarMix(4)(states), by_hand, atol=1e-6)  # the mix starts there


def test_too_many_layers_names_the_real_key():
    states = tuple(torch.zeros(1, 2, 3) for _ in range(3))  # a 2-layer encoder
    for mix in (LayerAverage(4), ScalarMix(4)):
        with pytest.raises(ClozelabError) as info:
            mix(states)
        message = str(info.value)
        assert "mix_layers" in message and "features.layers" not in message
        assert "3 hidden states" in message and "from 1 to 3" in message


@pytest.mark.parametrize("layer_mix", ["average", "learned"])
def test_features_mode_freezes_the_backbone(tiny_backbone, layer_mix):
    model = ClassificationModel(
        tiny_backbone(), 2, mode="features", mix_layers=2, layer_mix=layer_mix
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    mix_params = {n for n in trainable if n.startswith("mix.")}
    assert mix_params == ({"mix.weights", "mix.gamma"} if layer_mix == "learned" else set())
    model.train()
    assert not model.backbone.training
    batch = _batch([[2, 7, 8, 3]], tiny_backbone().tokenizer.pad_id)
    with torch.no_grad():
        states = model.backbone(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], True
        ).hidden_states
        assert torch.allclose(model.hidden(batch), (states[-1] + states[-2]) / 2, atol=1e-6)
    with pytest.raises(ClozelabError, match="layer_mix"):
        ClassificationModel(tiny_backbone(), 2, mode="features", layer_mix="max")


def _batch(ids, pad):
    ids = torch.tensor(ids)
    mask = (ids != pad).long()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("mode", ["finetune", "features"])
def test_pooling_reads_cls_or_the_mean_of_the_real_tokens(tiny_backbone, mode):
    torch.manual_seed(0)
    backbone = tiny_backbone()
    pad = backbone.tokenizer.pad_id
    kw = {"mode": mode, "mix_layers": 2}
    assert ClassificationModel(backbone, 2, **kw).pooling == (
        "cls" if mode == "finetune" else "mean"
    )
    batch = _batch([[2, 7, 8, 9, 3, pad, pad], [2, 11, 12, 3, pad, pad, pad]], pad)
    for pooling in ("cls", "mean"):
        model = ClassificationModel(backbone, 2, pooling=pooling, **kw).eval()
        with torch.no_grad():
            h = model.hidden(batch)
            pooled = model._pooled(h, batch["attention_mask"])
            m = batch["attention_mask"][..., None].float()
            if pooling == "cls":  # BERT's pooler: tanh(dense(h[:, 0]))
                expected = model.pooler.dense(h[:, 0]).tanh()
            else:
                expected = model.pooler((h * m).sum(1) / m.sum(1))
            assert torch.allclose(pooled, expected, atol=1e-6)
            # More padding never changes the pooled vector of a row.
            wider = _batch([[*r, pad, pad] for r in batch["input_ids"].tolist()], pad)
            again = model._pooled(model.hidden(wider), wider["attention_mask"])
            assert torch.allclose(pooled, again, atol=1e-5)
    cls_out = ClassificationModel(backbone, 2, pooling="cls", **kw).eval()
    with torch.no_grad():
        h = cls_out.hidden(batch)
        changed = h.clone()
        changed[:, 1:] += 1.0  # only non-[CLS] positions move
        assert torch.allclose(
            cls_out._pooled(h, batch["attention_mask"]),
            cls_out._pooled(changed, batch["attention_mask"]),
        )


def test_unknown_pooling_names_the_key_and_the_choices(tiny_backbone):
    with pytest.raises(ClozelabError, match=r"task\.pooling.*max.*cls.*mean"):
        ClassificationModel(tiny_backbone(), 2, pooling="max")


def test_bundled_similarity_uses_the_embed_api_with_task_layers(tiny_backbone):
    """task.layers=[-2, -1]: the word vectors are backbone.embed(..., layers=[-2, -1])."""
    from omegaconf import OmegaConf

    from clozelab.tasks.bundled import text_vectors
    from clozelab.training.evaluation import load_task

    backbone = tiny_backbone()
    task = OmegaConf.merge(load_task("simlex999"), {"layers": [-2, -1]})
    words = ["river", "king", "library"]
    got = text_vectors(backbone, task, words)
    tok = backbone.tokenizer
    for i, word in enumerate(words):
        ids = torch.tensor([[tok.cls_id, *tok.encode_batch([word])[0].ids, tok.sep_id]])
        with torch.no_grad():
            states = backbone(ids, torch.ones_like(ids), torch.zeros_like(ids), True).hidden_states
        by_hand = ((states[-2] + states[-1]) / 2)[0, 1:-1].mean(0)
        torch.testing.assert_close(got[i], by_hand, atol=1e-5, rtol=0)
