"""Corruption schemes: which units are corrupted and what happens to them (pure, seeded)."""
