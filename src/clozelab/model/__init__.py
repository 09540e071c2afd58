"""Embeddings, encoders, heads, HF import/export."""
