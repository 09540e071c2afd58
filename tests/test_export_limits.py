"""What ``clozelab export`` cannot carry into HF transformers, said as it is: ERNIE-THU's knowledge
fusion is refused with what to do instead; a MASS run exports as an exact HF BART that equals ours
at decoder positions 0..n-1, with the limit written down. (ERNIE 2.0's task table is HF ERNIE's
``task_type_embeddings``: tests/model/test_hf_ernie_parity.py, tests/test_export_ernie2.py.)"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.embeddings_variants import SinusoidalEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.knowledge import KnowledgeEncoder
from clozelab.training.hf_export import (
    NOTES_README,
    POSITIONS_KEY,
    run_corruption_keys,
    write_run_hf_dir,
)

H = 16
BODY = dict(hidden_size=H, num_layers=2, num_heads=2, intermediate_size=32)


@pytest.mark.parametrize(
    ("embedding", "encoder", "message"),
    [
        (
            lambda: BertEmbeddings(50, H),
            lambda: KnowledgeEncoder(**BODY, entity_dim=8, entity_heads=2, num_entities=5),
            r"^encoder='KnowledgeEncoder': ERNIE-THU's K-Encoder \(the knowledge-fusion "
            r".*no equivalent in HF transformers.*Fix: .*clozelab finetune / evaluate "
            r"checkpoint=RUN_DIR.*clozelab\.load\(RUN_DIR\).*entity_links=links.*encoder=post_ln",
        ),
        (
            lambda: SinusoidalEmbeddings(50, H),
            lambda: TransformerEncoder(**BODY),
            r"^embedding/encoder='SinusoidalEmbeddings/TransformerEncoder': HF BERT weights map "
            r"only onto BertEmbeddings \(HF ERNIE's: TaskEmbeddings\).*Fix: use embedding=bert "
            r"\(or embedding=task for HF ERNIE\)",
        ),
    ],
    ids=["ernie_thu", "no_hf_layout"],
)
def test_exports_say_what_has_no_hf_equivalent_and_what_to_do(
    tmp_path, embedding, encoder, message
):
    with pytest.raises(ClozelabError, match=message):
        write_run_hf_dir(tmp_path / "hf", embedding(), encoder(), {}, tmp_path / "tokenizer")
    assert not (tmp_path / "hf").exists()


def _seq2seq_run(compose_pretrain, tmp_path, experiment):
    """Components of a tiny ``experiment`` (weights moved off their init), its corruption and a
    clean batch; the resolved config saved as a run's config.yaml in ``tmp_path``."""
    from clozelab.data.tokenizer import train_wordpiece
    from clozelab.training.components import build_components

    cfg = compose_pretrain(f"experiment={experiment}", "model.max_position_embeddings=64")
    words = [f"w{i}" for i in range(40)]
    tokenizer = train_wordpiece([" ".join(words[i : i + 12]) for i in range(28)] * 3, 120)
    tokenizer.save(tmp_path / "tokenizer")
    embedding, encoder, objectives, corruption = build_components(cfg, tokenizer)
    torch.manual_seed(0)
    modules = (embedding, encoder, objectives["seq2seq"])
    with torch.no_grad():
        for p in (p for module in modules for p in module.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    for module in modules:
        module.eval()
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, tokenizer.vocab_size, (4, 30), generator=g)
    ids[:, 0], ids[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    special = (ids == tokenizer.cls_id) | (ids == tokenizer.sep_id)
    clean = dict(input_ids=ids, attention_mask=torch.ones_like(ids), special_tokens_mask=special)
    return embedding, encoder, objectives, lambda: corruption(clean, g)


def test_a_mass_export_equals_ours_at_positions_0_to_n_and_states_its_limit(
    compose_pretrain, tmp_path, caplog
):
    transformers = pytest.importorskip("transformers")
    embedding, encoder, objectives, corrupt = _seq2seq_run(compose_pretrain, tmp_path, "mass")
    keys = run_corruption_keys(tmp_path)  # what the saved config's corruption produces
    assert "decoder_position_ids" in keys
    with caplog.at_level(logging.WARNING, logger="clozelab.training.hf_export"):
        out = write_run_hf_dir(tmp_path / "hf", embedding, encoder, objectives,
                               tmp_path / "tokenizer", keys)  # fmt: skip
    assert any("no decoder_position_ids input" in r.getMessage() for r in caplog.records)
    readme = (out / NOTES_README).read_text("utf-8")
    config = json.loads((out / "config.json").read_text("utf-8"))
    for text in (readme, config[POSITIONS_KEY]):
        assert "BartForConditionalGeneration has no decoder_position_ids input" in text
        assert "whenever the decoder positions are 0..n-1" in text
        assert "It cannot be given the positions the decoder read in pre-training" in text

    hf, info = transformers.BartForConditionalGeneration.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    decoder, batch = objectives["seq2seq"].decoder, corrupt()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    dec_ids, positions = batch["decoder_input_ids"], batch["decoder_position_ids"]
    assert (positions[:, 0] > 0).all()  # each fragment starts inside its sentence

    def ours(position_ids):
        with torch.no_grad():
            memory = encoder(embedding(ids), mask).last_hidden_state
            hidden = decoder(dec_ids, embedding, memory, mask, position_ids)
            return decoder.logits(hidden.reshape(-1, hidden.shape[-1]), embedding)

    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits
    theirs = theirs.reshape(-1, theirs.shape[-1])
    default = torch.arange(dec_ids.shape[1]).expand_as(dec_ids)
    assert (ours(None) - theirs).abs().max() < 1e-4  # positions 0..n-1: the same model
    assert (ours(default) - theirs).abs().max() < 1e-4
    assert not torch.allclose(ours(positions), theirs, atol=1e-2)  # MASS's positions: not


def test_an_export_without_decoder_positions_writes_no_note(compose_pretrain, tmp_path, caplog):
    embedding, encoder, objectives, _ = _seq2seq_run(compose_pretrain, tmp_path, "bart")
    keys = run_corruption_keys(tmp_path)
    assert "decoder_position_ids" not in keys
    with caplog.at_level(logging.WARNING, logger="clozelab.training.hf_export"):
        out = write_run_hf_dir(tmp_path / "hf", embedding, encoder, objectives,
                               tmp_path / "tokenizer", keys)  # fmt: skip
    assert not caplog.records and not (out / NOTES_README).exists()
    assert POSITIONS_KEY not in json.loads((out / "config.json").read_text("utf-8"))
