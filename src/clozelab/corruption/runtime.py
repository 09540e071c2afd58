"""The run-time arguments a corruption gets besides its config: tokenizer ids, and the optional
inputs it declares in ``Corruption.runtime_inputs`` (pad/eos ids, the corpus statistics)."""

from __future__ import annotations

from types import SimpleNamespace

#: The optional run-time inputs a corruption may declare in ``Corruption.runtime_inputs``.
RUNTIME_INPUTS = ("pad_token_id", "eos_token_id", "corpus")

#: A tokenizer's ids for building a corruption before any tokenizer exists (``Corruption.
#: check_node``): BERT's layout ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4) in a vocabulary
#: large enough for every check a constructor makes of its own arguments.
STAND_IN_TOKENIZER = SimpleNamespace(
    vocab_size=1000, pad_id=0, sep_id=3, mask_id=4, special_ids=[0, 1, 2, 3, 4]
)


def runtime_kwargs(cls, tokenizer, prepared=None) -> dict:
    """Keyword arguments ``build_components`` passes to corruption class ``cls``."""
    kwargs = {
        "vocab_size": tokenizer.vocab_size,
        "mask_token_id": tokenizer.mask_id,
        "special_token_ids": tokenizer.special_ids,
    }
    optional = {
        "corpus": lambda: prepared.corpus_stats if prepared is not None else None,
        "pad_token_id": lambda: tokenizer.pad_id,
        "eos_token_id": lambda: tokenizer.sep_id,
    }
    kwargs.update({name: optional[name]() for name in cls.runtime_inputs})
    return kwargs


def restrict(cls, runtime: dict) -> dict:
    """``runtime`` without the optional arguments ``cls`` does not declare."""
    drop = set(RUNTIME_INPUTS) - set(cls.runtime_inputs)
    return {key: value for key, value in runtime.items() if key not in drop}
