"""Throughput of every corruption preset, side by side with HF ``DataCollatorForLanguageModeling``
(token and whole-word) and, for the seq2seq corruptions, HF's T5 span collator and fairseq's BART
noising / insertion (``bench_references``) on the same sequences (DESIGN.md §7: >= 10,000
sequences/s at length 128 on one core; HF's whole-word collator does ~830).

``clozelab bench`` (bench/pretrain.py) calls ``bench_corruptions``. The sequences are real text
(the bundled Wikipedia sample) tokenised with the BERT uncased vocabulary, as ``[CLS] A [SEP] B
[SEP]`` pairs with word ids from the tokenizer. Entity units are a synthetic annotation (2 of every
7 words) and the phrase table holds the 500 most frequent word bigrams of the same text: timing
only. Presets counting corpus tables get them from the bench text, not from shards.
"""

from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise

import torch

from clozelab.core.config import build, conf_dir, target_class
from clozelab.corruption.runtime import runtime_kwargs

PRESETS = (
    "mask",
    "whole_word",
    "ngram",
    "span",
    "entity",
    "phrase",
    "ernie",
    "replace",
    "delete",
    "reorder",
    "plm",
    "mask_insert",
    "insert",
    "t5_span",
    "t5_iid",
    "t5_drop",
    "t5_drop_spans",
    "t5_prefix_lm",
    "t5_bert",
    "t5_mass_style",
    "t5_deshuffle",
    "bart",
    "bart_infill",
    "bart_token_mask",
    "bart_token_delete",
    "bart_permute",
    "bart_rotate",
    "mass",
    "insert_restore",
)


def _texts(n: int) -> list[str]:
    try:
        from clozelab.data.corpus import iter_documents

        texts = []
        for doc in iter_documents("bundled:wikipedia"):
            texts.append(doc.text)
            if sum(len(t) for t in texts) > n * 1200:
                break
        texts = [t for t in texts if t.strip()]
        if texts:
            return texts
    except Exception:
        pass
    words = [
        "the",
        "river",
        "city",
        "music",
        "history",
        "science",
        "north",
        "king",
        "army",
        "language",
        "mountain",
        "island",
        "painter",
        "engine",
        "railway",
        "library",
        "theory",
        "planet",
        "ocean",
        "ancient",
        "modern",
        "national",
    ]
    g = torch.Generator().manual_seed(0)
    return [
        " ".join(words[i] for i in torch.randint(len(words), (200,), generator=g).tolist())
        for _ in range(n)
    ]


def bench_batch(seq_len: int = 128, batch: int = 32):
    """``(clean batch dict, HF tokenizer, list of HF feature dicts, clozelab Tokenizer)``."""
    from transformers import BertTokenizerFast

    from clozelab.data.tokenizer import bundled_vocab, load_tokenizer

    vocab = bundled_vocab("bundled:bert-base-uncased")
    hf_tok = BertTokenizerFast.from_pretrained(str(vocab.parent))
    ours = load_tokenizer("bundled:bert-base-uncased")
    text = " ".join(_texts(batch))
    enc = hf_tok(text, add_special_tokens=False)
    ids, words = enc["input_ids"], enc.word_ids()
    half = (seq_len - 3) // 2
    rows, word_rows, features = [], [], []
    for r in range(batch):
        offset = (r * (seq_len - 3)) % max(1, len(ids) - seq_len)
        a = ids[offset : offset + half]
        b = ids[offset + half : offset + seq_len - 3]
        wa = words[offset : offset + half]
        wb = words[offset + half : offset + seq_len - 3]
        row = [hf_tok.cls_token_id, *a, hf_tok.sep_token_id, *b, hf_tok.sep_token_id]
        rows.append(row)
        base = wa[0]
        w = [-1, *(x - base for x in wa), -1, *(x - base + 1 for x in wb), -1]
        word_rows.append(w)
        features.append({"input_ids": row, "token_type_ids": [0] * (half + 2) + [1] * (len(b) + 1)})
    input_ids = torch.tensor(rows)
    word_ids = torch.tensor(word_rows)
    special = word_ids < 0
    word_ids = torch.where(
        special, -1, word_ids - torch.where(special, 1 << 30, word_ids).amin(-1, keepdim=True)
    )
    entity = torch.where(((word_ids % 7) == 1) | ((word_ids % 7) == 2), word_ids // 7, -1)
    sentence = torch.where(special, -1, (torch.arange(seq_len) // 20).expand(batch, seq_len))
    clean = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "token_type_ids": torch.tensor([f["token_type_ids"] for f in features]),
        "special_tokens_mask": special.long(),
        "word_ids": word_ids,
        "entity_ids": entity.masked_fill(special, -1),
        "sentence_ids": sentence,
    }
    return clean, hf_tok, features, ours


def _phrase_table(clean):
    from clozelab.corruption.phrases import PhraseTable

    pairs = Counter()
    for ids, words in zip(clean["input_ids"].tolist(), clean["word_ids"].tolist()):
        spelled, cur, last = [], [], None
        for tok, w in zip(ids, words):
            if w != last and cur:
                spelled.append(tuple(cur))
                cur = []
            if w >= 0:
                cur.append(tok)
            last = w
        pairs.update(pairwise(spelled))
    return PhraseTable([[list(a), list(b)] for (a, b), _ in pairs.most_common(500)])


def build_preset(name: str, tokenizer, clean):
    """The preset's corruption, with corpus tables taken from the bench batch."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(conf_dir() / "corruption" / f"{name}.yaml")
    cls = target_class(node, "corruption")
    runtime = runtime_kwargs(cls, tokenizer, None)
    if "corpus" in runtime and node.get("replace_distribution") == "unigram":
        counts = torch.bincount(clean["input_ids"].flatten(), minlength=tokenizer.vocab_size)
        runtime["replacement_probs"] = counts.double() + 1.0
    corruption = build(node, f"corruption={name}", **runtime)
    if getattr(corruption, "phrases", "absent") is None:
        corruption.phrases = _phrase_table(clean)
    return corruption


def _rate(fn, batch_size: int, seconds: float) -> tuple[float, float]:
    """Sequences per wall-clock second and per CPU-second of this process (on a loaded machine
    the second is the one-core throughput; with one thread the two agree on an idle one)."""
    fn(0)  # warm-up
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        fn(calls + 1)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            used = max(time.process_time() - cpu, 1e-9)
            return round(calls * batch_size / elapsed, 1), round(calls * batch_size / used, 1)


def _rates(results: dict, name: str, fn, batch_size: int, seconds: float) -> None:
    wall, cpu = _rate(fn, batch_size, seconds)
    results[f"corruption.{name}.sequences_per_s"] = wall
    results[f"corruption.{name}.sequences_per_cpu_s"] = cpu


def bench_corruptions(
    presets: list[str] | None = None,
    seq_len: int = 128,
    batch: int = 32,
    seconds: float = 1.0,
    threads: int | None = 1,
) -> dict:
    """Sequences per second of each preset and of HF's token / whole-word collators (one thread by
    default; the collators run on the same sequences)."""
    from transformers import DataCollatorForLanguageModeling

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        clean, hf_tok, features, ours = bench_batch(seq_len, batch)
        results: dict[str, float] = {}
        for name in presets or PRESETS:
            corruption = build_preset(name, ours, clean)
            call = lambda i, c=corruption: c(clean, torch.Generator().manual_seed(i))  # noqa: E731
            _rates(results, name, call, batch, seconds)
        from clozelab.corruption.bench_references import references

        for name, call in references(clean, ours).items():  # seq2seq references, same rows
            _rates(results, name, lambda i, c=call: c(), batch, seconds)
        token = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15)
        _rates(results, "hf_token", lambda i: token([dict(f) for f in features]), batch, seconds)
        text_features = []
        for f in features:  # whole-word masking needs offsets: re-encode with them
            enc = hf_tok(
                hf_tok.decode(f["input_ids"][1:-1]),
                return_offsets_mapping=True,
                truncation=True,
                max_length=seq_len,
            )
            text_features.append(dict(enc))
        whole = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, whole_word_mask=True)
        _rates(
            results,
            "hf_whole_word",
            lambda i: whole([dict(f) for f in text_features]),
            batch,
            seconds,
        )
        return results
    finally:
        torch.set_num_threads(previous)
