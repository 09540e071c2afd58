"""The run-time arguments a corruption gets besides its config: tokenizer ids, and the training
shards for the schemes that need corpus tables (unigram counts, phrase table)."""

from __future__ import annotations


def runtime_kwargs(cls, tokenizer, prepared=None) -> dict:
    """Keyword arguments ``build_components`` passes to corruption class ``cls``."""
    kwargs = {
        "vocab_size": tokenizer.vocab_size,
        "mask_token_id": tokenizer.mask_id,
        "special_token_ids": tokenizer.special_ids,
    }
    if getattr(cls, "accepts_corpus", False):
        kwargs["corpus_dir"] = str(prepared.train_dir) if prepared is not None else None
    if getattr(cls, "accepts_pad", False):
        kwargs["pad_token_id"] = tokenizer.pad_id
    if getattr(cls, "accepts_eos", False):
        kwargs["eos_token_id"] = tokenizer.sep_id
    return kwargs


def restrict(cls, runtime: dict) -> dict:
    """``runtime`` without the optional arguments ``cls`` does not take."""
    out = dict(runtime)
    if not getattr(cls, "accepts_corpus", False):
        out.pop("corpus_dir", None)
    if not getattr(cls, "accepts_pad", False):
        out.pop("pad_token_id", None)
    if not getattr(cls, "accepts_eos", False):
        out.pop("eos_token_id", None)
    return out
