"""model.compile: in-place torch.compile of the embedding and each encoder layer.

Fast tests trace with dynamo's ``eager`` backend (the same graphs inductor would get, without
its C++ code generation); the inductor tests are marked slow (about a minute on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clozelab.pretrain as pretrain_module
from clozelab.core.batch import Batch
from clozelab.core.errors import ClozelabError
from clozelab.model.compile import apply_model_compile, compile_components, is_compiled
from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.encoder_variants import BiLSTMEncoder
from clozelab.objectives.mlm import MLM
from clozelab.objectives.nsp import NSP
from clozelab.training.module import PretrainModule

V, H = 200, 32


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # no cached graphs or recompile counts from other tests
    yield
    torch._dynamo.reset()


def make_module(**encoder_kw) -> PretrainModule:
    torch.manual_seed(0)
    embedding = BertEmbeddings(V, H, max_position_embeddings=64)
    encoder = TransformerEncoder(H, 2, 2, 64, **encoder_kw)
    return PretrainModule(embedding, encoder, {"mlm": MLM(H, V), "nsp": NSP(H)}, optimizer=None)


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:], mask[3, 4:] = 0, 0
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 7] = ids[0, 7]
    nsp = torch.tensor([0, 1, 0, 1])
    return Batch(
        input_ids=ids * mask,
        attention_mask=mask,
        token_type_ids=ids * 0,
        mlm_labels=labels,
        next_sentence_label=nsp,
    )


def compiled_matches_eager(backend: str, unpad: bool) -> None:
    """Same loss as eager (dropout off) within 1e-5; then two training steps with dropout."""
    eager, compiled = make_module(unpad=unpad).eval(), make_module(unpad=unpad).eval()
    names = compile_components(compiled.embedding, compiled.encoder, backend=backend)
    assert names == ["embedding", "encoder.layers.0", "encoder.layers.1"]
    with torch.no_grad():
        for seed in (0, 1):
            batch = make_batch(seed)
            assert abs(float(compiled(batch)[0]) - float(eager(batch)[0])) <= 1e-5
    compiled.train()
    optimizer = torch.optim.AdamW(compiled.parameters(), lr=1e-3)
    for seed in (0, 1):
        loss = compiled(make_batch(seed))[0]
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in compiled.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("unpad", [False, True])
def test_traced_model_matches_eager_and_trains(unpad):
    compiled_matches_eager("eager", unpad)


@pytest.mark.slow
@pytest.mark.parametrize("unpad", [False, True])
def test_inductor_matches_eager_and_trains(unpad):
    compiled_matches_eager("inductor", unpad)


def test_in_place_compile_keeps_state_dict_keys(tmp_path):
    from safetensors.torch import load_file

    from clozelab.training.hf_export import write_hf_dir

    eager, compiled = make_module(), make_module()
    names = apply_model_compile(compiled.embedding, compiled.encoder, {"compile": True})
    assert len(names) == 3 and all(is_compiled(layer) for layer in compiled.encoder.layers)
    assert is_compiled(compiled.embedding) and not is_compiled(eager.encoder.layers[0])
    state = compiled.state_dict()
    assert list(state) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in state)
    torch.save(state, tmp_path / "state.pt")  # a checkpoint loads into an eager module
    eager.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True), strict=True)
    out = write_hf_dir(tmp_path / "hf", compiled.embedding, compiled.encoder,
                       compiled.objectives["mlm"], compiled.objectives["nsp"])  # fmt: skip
    keys = load_file(str(out / "model.safetensors"))
    assert "bert.encoder.layer.1.output.dense.weight" in keys
    assert not any("_orig_mod" in key for key in keys)


def test_off_by_default_and_other_encoders_compile_whole():
    module = make_module()
    assert apply_model_compile(module.embedding, module.encoder, {"compile": False}) == []
    assert not is_compiled(module.embedding)
    lstm = BiLSTMEncoder(H, 2)
    assert compile_components(module.embedding, lstm) == ["embedding", "encoder"]
    assert is_compiled(lstm)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"compile": True, "compile_mode": "fastest"}, "model.compile_mode"),
        ({"compile": True, "compile_backend": "tensorrt-x"}, "model.compile_backend"),
        ({"compile": True, "compile_dynamic": "yes"}, "model.compile_dynamic"),
    ],
)
def test_config_errors(cfg, key):
    module = make_module()
    with pytest.raises(ClozelabError, match=key):
        apply_model_compile(module.embedding, module.encoder, cfg)


def test_pretrain_wires_model_compile(compose_pretrain, monkeypatch):
    """A tiny run with model.compile=true trains, checkpoints under the eager names and exports."""
    import clozelab

    compiled: list[list[str]] = []
    original = pretrain_module.apply_model_compile

    def spy(embedding, encoder, model_cfg, objectives=None):
        compiled.append(original(embedding, encoder, model_cfg, objectives))
        return compiled[-1]

    monkeypatch.setattr(pretrain_module, "apply_model_compile", spy)
    cfg = compose_pretrain("model.compile=true", "model.compile_backend=eager",
                           "trainer.max_steps=2", "initial_validation=false")  # fmt: skip
    metrics = pretrain_module.pretrain(cfg)
    assert compiled == [["embedding", "encoder.layers.0", "encoder.layers.1"]]
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    run_dir = Path(cfg.paths.output_dir)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "encoder.layers.0.attention.qkv.weight" in state
    assert not any("_orig_mod" in key for key in state)
    assert (run_dir / "hf" / "model.safetensors").is_file()
    assert clozelab.load(run_dir).load_report["missing"] == []


def make_t5_module() -> PretrainModule:
    from clozelab.model.t5 import T5Decoder, T5Embeddings, T5Encoder
    from clozelab.objectives.seq2seq import Seq2Seq

    torch.manual_seed(0)
    sizes = (H, 2, 2, 64)
    decoder = T5Decoder(*sizes)
    return PretrainModule(T5Embeddings(V, H), T5Encoder(*sizes),
                          {"seq2seq": Seq2Seq(decoder)}, optimizer=None)  # fmt: skip


def make_seq2seq_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    labels = torch.randint(5, V, (4, 6), generator=g)
    labels[2, 4:] = -100
    decoder_input_ids = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], 1).clamp(0)
    return Batch(input_ids=ids * mask, attention_mask=mask, labels=labels,
                 decoder_input_ids=decoder_input_ids)  # fmt: skip


def test_seq2seq_decoder_layers_compile_and_train_like_eager():
    """The seq2seq objective's compile_targets hook adds each decoder layer; traced by
    AOTAutograd, a training step (dropout on) draws the eager masks: same loss, same gradients."""
    eager, compiled = make_t5_module(), make_t5_module()
    names = apply_model_compile(compiled.embedding, compiled.encoder,
                                {"compile": True, "compile_backend": "aot_eager"},
                                compiled.objectives)  # fmt: skip
    assert names == ["embedding", "encoder.layers.0", "encoder.layers.1",
                     "objectives.seq2seq.decoder.layers.0",
                     "objectives.seq2seq.decoder.layers.1"]  # fmt: skip
    assert all(is_compiled(layer) for layer in compiled.objectives["seq2seq"].decoder.layers)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for seed in (0, 1):
        batch = make_seq2seq_batch(seed)
        losses = []
        for module in (eager, compiled):
            torch.manual_seed(seed)
            loss = module(batch)[0]
            loss.backward()
            losses.append(float(loss.detach()))
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
            a.grad = b.grad = None


def test_ernie_thu_aggregators_compile_too():
    """ERNIE-THU's K-Encoder layers (the aggregators) are named by the encoder's compile_targets
    hook (before, only the T-Encoder's layers compiled: half of the model ran eager), and the
    traced encoder computes what the eager one does, with and without entity inputs."""
    from clozelab.model.knowledge import KnowledgeEncoder

    def knowledge():
        torch.manual_seed(0)
        return KnowledgeEncoder(H, 3, 2, 64, entity_dim=8, entity_heads=2, num_entities=20)

    eager, compiled = knowledge().eval(), knowledge().eval()
    embedding = BertEmbeddings(V, H, max_position_embeddings=64)
    names = compile_components(embedding, compiled, backend="eager")
    assert names == ["embedding", "encoder.layers.0", "encoder.aggregators.0",
                     "encoder.aggregators.1"]  # fmt: skip
    assert all(is_compiled(a) for a in compiled.aggregators)
    x, mask = torch.randn(2, 10, H), torch.ones(2, 10)
    links = torch.full((2, 10), -1)
    links[0, 1], links[1, 4] = 3, 7
    with torch.no_grad():
        for kw in ({}, {"entity_links": links}):
            ours, ref = compiled(x, mask, **kw), eager(x, mask, **kw)
            assert torch.allclose(ours.last_hidden_state, ref.last_hidden_state, atol=1e-6)
    compiled.train()
    compiled(x, mask, entity_links=links).last_hidden_state.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in compiled.aggregators.parameters()
               if p.grad is not None)  # fmt: skip
