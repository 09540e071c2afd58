"""``Lookup``: ``nn.Embedding`` whose compiled CPU backward is ATen's deterministic kernel.

Inductor's own embedding backward adds repeated ids' rows from several threads in the order
they finish, so two compiled runs with one seed differed in every weight. Fast tests trace with
``aot_eager`` (AOTAutograd's graphs, no C++ code): the operators are in the graph and the values
and gradients are eager's. The inductor case (two runs, bitwise) is slow.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clozelab.model.embeddings import BertEmbeddings
from clozelab.model.lookup import Lookup


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _ids() -> torch.Tensor:
    ids = torch.randint(0, 20, (6, 40), generator=torch.Generator().manual_seed(0))
    ids[:, :3] = 0  # the padding row, repeated
    ids[:, 3:9] = 7  # a row repeated 36 times
    return ids


def _value_and_grad(module: nn.Module, call, ids: torch.Tensor):
    module.zero_grad(set_to_none=True)
    out = call(ids)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    return out.detach(), module.weight.grad.clone()


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_compiled_lookup_is_the_embedding_with_its_padding_row(padding_idx):
    torch.manual_seed(0)
    plain = nn.Embedding(20, 8, padding_idx=padding_idx)
    lookup = Lookup(20, 8, padding_idx=padding_idx)
    lookup.load_state_dict(plain.state_dict())  # the same keys: "weight"
    ops: list[str] = []

    def record(gm, inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    compiled = torch.compile(lookup, backend=record, fullgraph=True)
    got, got_grad = _value_and_grad(lookup, compiled, _ids())
    want, want_grad = _value_and_grad(plain, plain, _ids())
    assert any("clozelab.embedding_lookup" in op for op in ops), ops
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
    aot = torch.compile(Lookup(20, 8, padding_idx=padding_idx), backend="aot_eager")
    aot._orig_mod.load_state_dict(plain.state_dict())
    got, got_grad = _value_and_grad(aot._orig_mod, aot, _ids())
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
    if padding_idx is not None:
        assert bool((got_grad[0] == 0).all())


def test_eager_lookup_is_nn_embedding_and_loads_pretrained():
    table = torch.randn(5, 3)
    lookup = Lookup.from_pretrained(table, freeze=False)
    assert isinstance(lookup, Lookup) and lookup.weight.requires_grad
    torch.testing.assert_close(lookup(torch.tensor([4, 0])), table[[4, 0]])
    assert isinstance(BertEmbeddings(30, 8).word_embeddings, Lookup)


@pytest.mark.slow
def test_two_inductor_compiled_runs_on_two_threads_are_bitwise_equal():
    """Without ``Lookup`` these differed by ~1e-7 after 10 steps of a tiny BERT (2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            torch._dynamo.reset()
            torch.manual_seed(0)
            embedding = BertEmbeddings(50, 32, max_position_embeddings=64)
            embedding.compile(backend="inductor")
            optimizer = torch.optim.AdamW(embedding.parameters(), lr=1e-2)
            g = torch.Generator().manual_seed(1)
            for _ in range(4):
                ids = torch.randint(0, 6, (64, 48), generator=g)  # many repeats a row
                out = embedding(ids, torch.zeros_like(ids))
                (out * torch.randn(out.shape, generator=g)).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            runs.append({k: v.clone() for k, v in embedding.state_dict().items()})
        for key, value in runs[0].items():
            assert torch.equal(value, runs[1][key]), key
    finally:
        torch.set_num_threads(threads)
