"""The run-time arguments a corruption gets besides its config: tokenizer ids, and the optional
inputs it declares in ``Corruption.runtime_inputs`` (pad/eos ids, the corpus statistics)."""

from __future__ import annotations


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
    from clozelab.corruption.base import RUNTIME_INPUTS

    drop = set(RUNTIME_INPUTS) - set(cls.runtime_inputs)
    return {key: value for key, value in runtime.items() if key not in drop}
