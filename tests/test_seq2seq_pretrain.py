"""Encoder-decoder pre-training end to end (tiny T5 and BART on the generated corpus), resume,
and the compose-time refusals of impossible pairs. The batches come from the test-only builder
in seq2seq_batches.py (contract keys), independent of the corruption presets."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from seq2seq_batches import TARGET

from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.evaluation import load_task, run_task
from clozelab.training.module import PretrainModule
from clozelab.training.validate import validate_pretrain

LAYOUTS = {
    "t5": ("embedding=t5", "encoder=t5", "decoder=t5"),
    "bart": ("embedding=bart", "encoder=post_ln", "decoder=bart", "model.layer_norm_eps=1e-5"),
}


def _with_test_batches(cfg, extra_vocab: int = 0):
    with open_dict(cfg):
        cfg.corruption = OmegaConf.create(
            {"_target_": TARGET, "rate": 0.15, "extra_vocab": extra_vocab}
        )
    return cfg


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_tiny_encoder_decoder_pretrains_and_resumes(compose_pretrain, tmp_path, kind, monkeypatch):
    run = tmp_path / kind
    overrides = (*LAYOUTS[kind], "objective=[seq2seq]", f"paths.output_dir={run}",
                 "trainer.max_steps=6")  # fmt: skip

    def stop_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:  # SIGTERM while step 4 runs: checkpoint, exit
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(PretrainModule, "on_train_batch_start", stop_at_step_3, raising=False)
        with pytest.raises(SystemExit):
            pretrain(_with_test_batches(compose_pretrain(*overrides), 4))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    state = checkpoint["state_dict"]
    rows = state["embedding.word_embeddings.weight"].shape[0]
    assert any(k.startswith("objectives.seq2seq.decoder.layers.1.cross_attention") for k in state)
    resumed = pretrain(_with_test_batches(compose_pretrain(*overrides), 4))  # the same command
    assert resumed["steps"] == 6 and resumed["status"] == "completed"
    assert rows == resumed["vocab_size"] + 4  # the tokenizer's ids plus the sentinels
    assert math.isfinite(resumed["train/seq2seq_loss"])
    assert resumed["val/seq2seq_loss"] < resumed["initial/val/seq2seq_loss"]
    _check_hf_export(run, tmp_path / "exported")
    _finetune_both_ways(run, tmp_path)


def _check_hf_export(run: Path, out: Path) -> None:
    """RUN_DIR/hf (written at the end of the run) and clozelab export load into transformers'
    T5/BART with no missing or unexpected weights and give our logits."""
    transformers = pytest.importorskip("transformers")
    import clozelab
    from clozelab.export import export

    export(run, out)
    model = clozelab.load(run)
    ids = torch.tensor([[5, 20, 21, 22, 3], [5, 30, 3, 0, 0]])
    mask = (ids != 0).long()
    decoder_ids = torch.tensor([[0, 7, 8], [0, 9, 10]])
    with torch.no_grad():
        memory = model.encode(ids, mask).last_hidden_state
        hidden = model.decoder(decoder_ids, model.embedding, memory, mask)
        ours = model.decoder.logits(hidden.reshape(-1, hidden.shape[-1]), model.embedding)
    for directory in (run / "hf", out):
        hf, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            directory, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            theirs = hf.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        assert (theirs.logits.reshape(ours.shape) - ours).abs().max() < 1e-4
    # model.init_from=<HF T5/BART dir>: a fresh run's body and decoder start from those weights
    from clozelab.data.tokenizer import load_tokenizer
    from clozelab.training.loading import build_run_components, init_components

    _, embedding, encoder, objectives = build_run_components(run)
    report = init_components(str(out), embedding, encoder, objectives,
                             load_tokenizer(run / "tokenizer"))  # fmt: skip
    assert report == {"missing": [], "unexpected": []}
    decoder = objectives["seq2seq"].decoder
    for mine, loaded in ((embedding, model.embedding), (decoder, model.decoder)):
        for a, b in zip(mine.state_dict().values(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def _finetune_both_ways(run: Path, tmp_path: Path) -> None:
    """clozelab finetune on the seq2seq run: classification from the encoder alone, and the label
    written as a word by the decoder (greedy), each scored and written to eval/<task>.json."""
    small = {"epochs": 1, "max_train_examples": 16, "max_eval_examples": 8, "batch_size": 8}
    for name, metric in (("polarity", "accuracy"), ("polarity_generate", "accuracy")):
        task = OmegaConf.merge(load_task(name), small)
        result = run_task(task, str(run), seeds=[1], eval_dir=tmp_path / "eval")
        assert 0.0 <= result["value"] <= 1.0 and result["metric"] == metric
        assert (tmp_path / "eval" / f"{name}.json").is_file()
    # the "why pre-train" baseline of a text-to-text task: a random model like the run (decoder
    # and sentinel rows included)
    task = OmegaConf.merge(load_task("polarity_generate"), small)
    result = run_task(task, "none", seeds=[1], eval_dir=tmp_path / "random",
                      random_init=OmegaConf.create({"like": str(run)}))  # fmt: skip
    assert 0.0 <= result["value"] <= 1.0


def test_seq2seq_objective_without_a_decoder_is_refused(compose_pretrain):
    cfg = _with_test_batches(compose_pretrain("objective=[seq2seq]"))
    with pytest.raises(ClozelabError, match="decoder=t5"):
        validate_pretrain(cfg)


def test_seq2seq_batches_on_an_encoder_only_model_are_refused(compose_pretrain):
    cfg = _with_test_batches(compose_pretrain("objective=[mlm]"))
    with pytest.raises(ClozelabError, match="encoder-only"):
        validate_pretrain(cfg)


def test_seq2seq_objective_without_target_keys_is_refused(compose_pretrain):
    cfg = compose_pretrain(*LAYOUTS["t5"], "objective=[seq2seq]", "corruption=mask")
    with pytest.raises(ClozelabError, match=r"labels.*seq2seq corruption"):
        validate_pretrain(cfg)


def test_decoder_sizes_follow_the_model_group(compose_pretrain):
    cfg = compose_pretrain(*LAYOUTS["t5"], "objective=[seq2seq]", "model.num_layers=3")
    assert cfg.objective.seq2seq.decoder.num_layers == 3
    assert cfg.objective.seq2seq.decoder.hidden_size == cfg.model.hidden_size
    assert Path(cfg.paths.output_dir).name == "run"


def test_a_decoder_no_objective_runs_is_refused(compose_pretrain):
    cfg = compose_pretrain("decoder=t5", "objective=[mlm]")
    with pytest.raises(ClozelabError, match="runs a decoder"):
        validate_pretrain(cfg)


def test_a_generation_task_on_an_encoder_only_model_is_refused(tmp_path):
    from tasks.conftest import TINY_ARCH

    from clozelab.data.tokenizer import train_wordpiece

    tok = train_wordpiece(["a good movie", "a bad movie"] * 5, 120).save(tmp_path / "tok")
    task = OmegaConf.merge(load_task("polarity_generate"), {"max_train_examples": 4})
    with pytest.raises(ClozelabError, match="no decoder"):
        run_task(task, "none", seeds=[1], eval_dir=tmp_path / "eval",
                 arch=OmegaConf.create(TINY_ARCH), random_init={"tokenizer": str(tok)})  # fmt: skip


def test_mass_decoder_reads_the_fragment_positions_from_the_corruption(compose_pretrain,
                                                                       monkeypatch):  # fmt: skip
    """experiment=mass (SPECS §17): the corruption's decoder_position_ids (each fragment token's
    position in the sentence) travel through the data module into the decoder, which places its
    learned positions there (BART layout) instead of at 0..k-1."""
    from clozelab.model.bart import BartDecoder
    from clozelab.objectives.seq2seq import Seq2Seq

    batches, seen = [], []
    forward, objective = BartDecoder.forward, Seq2Seq.forward

    def spy(self, input_ids, embedding, memory, memory_mask=None, position_ids=None):
        if self.training:
            seen.append(position_ids)
        return forward(self, input_ids, embedding, memory, memory_mask, position_ids)

    def spy_batch(self, encoder_output, batch, embedding):
        if self.training:
            batches.append({k: v.clone() for k, v in batch.items() if torch.is_tensor(v)})
        return objective(self, encoder_output, batch, embedding)

    monkeypatch.setattr(BartDecoder, "forward", spy)
    monkeypatch.setattr(Seq2Seq, "forward", spy_batch)
    cfg = compose_pretrain("experiment=mass", "trainer.max_steps=1", "initial_validation=false",
                           "trainer.val_check_interval=1", "eval.suite=null")  # fmt: skip
    pretrain(cfg)
    batch, positions = batches[0], seen[0]
    labels = batch["labels"]
    assert positions is not None and positions.shape[0] == labels.shape[0]
    assert torch.equal(positions, batch["decoder_position_ids"][:, : positions.shape[1]])
    special = batch["special_tokens_mask"].bool()
    for row in range(labels.shape[0]):
        fragment = positions[row][labels[row, : positions.shape[1]] != -100]
        # one fragment of the row's non-special tokens, in order, at its source positions: the
        # positions between two of its tokens are specials (a [SEP] inside a packed row)
        assert len(fragment) > 0 and (fragment[1:] > fragment[:-1]).all()
        inside = torch.arange(int(fragment[0]), int(fragment[-1]) + 1)
        skipped = inside[~torch.isin(inside, fragment)]
        assert special[row, skipped].all() and not special[row, fragment].any()
    assert (positions[:, 0] > 1).any()  # not the default 0..k-1


def test_decoder_positions_change_bart_states_and_only_distances_count_for_t5():
    """BART's decoder adds the learned position of each given position; T5's relative bias sees
    distances only, so a contiguous fragment at any offset is decoded as at 0..k-1."""
    from clozelab.model.bart import BartDecoder, BartEmbeddings
    from clozelab.model.t5 import T5Decoder, T5Embeddings

    torch.manual_seed(0)
    ids = torch.randint(5, 50, (2, 6))
    memory = torch.randn(2, 9, 16)
    shifted = torch.arange(6).expand(2, 6) + torch.tensor([[7], [3]])
    default = torch.arange(6).expand(2, 6)
    bart = BartDecoder(16, 1, 2, 32, vocab_size=50, max_position_embeddings=32).eval()
    bart_emb = BartEmbeddings(50, 16, max_position_embeddings=32)
    t5, t5_emb = T5Decoder(16, 1, 2, 32).eval(), T5Embeddings(50, 16)
    with torch.no_grad():
        a = bart(ids, bart_emb, memory, None, shifted)
        assert torch.equal(bart(ids, bart_emb, memory, None, default), bart(ids, bart_emb, memory))
        assert not torch.allclose(a, bart(ids, bart_emb, memory))
        b = t5(ids, t5_emb, memory, None, shifted)
        assert torch.allclose(b, t5(ids, t5_emb, memory), atol=1e-6)


@pytest.mark.parametrize(("saved", "built"), [("t5", "bart"), ("bart", "t5")])
def test_init_from_an_hf_encoder_decoder_of_the_other_family_is_refused(tmp_path, saved, built):
    """A BART run from an HF T5 directory matched no key and started from random weights (with a
    warning), a T5 run from a BART one was refused over its vocabulary size: both are refused
    naming the layouts."""
    transformers = pytest.importorskip("transformers")
    from clozelab.model.hf_seq2seq import components_from_hf_config
    from clozelab.objectives.seq2seq import Seq2Seq
    from clozelab.training.loading import load_weights

    configs = {
        "t5": transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                    num_heads=2, decoder_start_token_id=0),
        "bart": transformers.BartConfig(vocab_size=64, d_model=16, encoder_layers=1,
                                        decoder_layers=1, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=32,
                                        decoder_ffn_dim=32, max_position_embeddings=32),
    }  # fmt: skip
    models = {"t5": transformers.T5ForConditionalGeneration,
              "bart": transformers.BartForConditionalGeneration}  # fmt: skip
    torch.manual_seed(0)
    models[saved](configs[saved]).save_pretrained(tmp_path / "hf")
    embedding, encoder, decoder = components_from_hf_config(configs[built].to_dict())
    objectives = {"seq2seq": Seq2Seq(decoder)}
    with pytest.raises(ClozelabError, match=rf"an HF {saved} encoder-decoder, but this run "
                       rf"builds the {built} layout.*experiment={saved}"):  # fmt: skip
        load_weights(tmp_path / "hf", embedding, encoder, objectives, key="model.init_from")
    # the same family loads every weight
    embedding, encoder, decoder = components_from_hf_config(configs[saved].to_dict())
    report = load_weights(tmp_path / "hf", embedding, encoder, {"seq2seq": Seq2Seq(decoder)},
                          key="model.init_from")  # fmt: skip
    assert report == {"missing": [], "unexpected": []}


def test_model_compile_covers_the_decoder_in_a_seq2seq_run(compose_pretrain, tmp_path):
    """model.compile=true on a tiny T5 run compiles the decoder layers too (the objective's
    compile_targets hook), trains, and checkpoints under the eager names."""
    from clozelab.model.compile import is_compiled

    built = []
    original = PretrainModule.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    run = tmp_path / "compiled"
    overrides = (*LAYOUTS["t5"], "objective=[seq2seq]", f"paths.output_dir={run}",
                 "trainer.max_steps=2", "model.compile=true",
                 "model.compile_backend=eager")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PretrainModule, "__init__", keep)
        metrics = pretrain(_with_test_batches(compose_pretrain(*overrides), 4))
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    decoder = built[0].objectives["seq2seq"].decoder
    assert all(is_compiled(layer) for layer in decoder.layers)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "objectives.seq2seq.decoder.layers.1.cross_attention.q.weight" in state
    assert not any("_orig_mod" in key for key in state)


def test_compile_without_dynamic_shapes_is_warned_about(compose_pretrain, caplog):
    """Target (and, after most corruptions, source) lengths change from batch to batch, so
    model.compile_dynamic=false would trace new decoder graphs for each length."""
    from clozelab.objectives.seq2seq import Seq2Seq

    base = (*LAYOUTS["t5"], "objective=[seq2seq]", "model.compile=true")
    for dynamic, warned in (("false", True), ("null", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="clozelab.objectives.seq2seq"):
            Seq2Seq.check_config(compose_pretrain(*base, f"model.compile_dynamic={dynamic}"),
                                 "seq2seq")  # fmt: skip
        assert ("model.compile_dynamic=null makes them dynamic" in caplog.text) is warned
