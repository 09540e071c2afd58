"""clozelab: config-driven ablations of BERT-family pre-training.

``clozelab.load(path)`` and ``clozelab.load_tokenizer(path)`` (see ``clozelab.api``) are imported
on first use, so ``import clozelab`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["load", "load_tokenizer"]


def __getattr__(name: str):
    if name in __all__:
        from clozelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'clozelab' has no attribute {name!r}")
