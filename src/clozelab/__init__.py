"""clozelab: config-driven ablations of BERT-family pre-training."""

__version__ = "0.1.0"
