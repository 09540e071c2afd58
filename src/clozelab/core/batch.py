"""The batch contract shared by data, corruptions, objectives and tasks (DESIGN.md §3)."""

IGNORE_INDEX = -100
"""Target value of positions that carry no loss (HF and PyTorch cross-entropy convention)."""
