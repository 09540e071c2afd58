"""Pre-training objectives: each an nn.Module owning its head and its loss."""
