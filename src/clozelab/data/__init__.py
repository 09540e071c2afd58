"""Corpus readers, sentence splitting, tokenizer, cached shards, instances, datamodule."""
