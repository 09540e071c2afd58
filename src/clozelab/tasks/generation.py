"""Text-to-text downstream tasks (T5's format, Raffel et al. 2020 §2.4): ``GenerationTask``
fine-tunes a pre-trained encoder-decoder with teacher forcing and scores its greedy
outputs.

- SQuAD (``format: squad``): source ``question: Q context: C``, target the first gold answer;
  scored by exact match and F1 (official normalisation) against every gold answer.
- Classification as label words (``glue``/``tsv``/``jsonl``/... formats with labels): source
  ``<task> sentence: A`` (pairs: ``<task> sentence1: A sentence2: B``), target the label's word
  (``task.label_words`` maps each label to a word; default the label itself); scored by accuracy
  (the generated text equals the gold word after normalisation) and exact match.

Features: ``input_ids`` = [CLS] source [SEP] (cut to ``max_seq_length``), ``target_ids`` =
target + [SEP] (eos; cut to ``max_target_length``), ``decoder_input_ids`` = the decoder start id
(pad for T5, eos for BART: ``decoder.start``) then the targets shifted right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from clozelab.core.errors import check_int, config_error
from clozelab.model.decoder import Decoder
from clozelab.model.generate import greedy_decode, strip_after_eos
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.metrics import normalize_answer, squad_scores
from clozelab.tasks.readers import QAExample, TextExample

#: Metrics a generation task can report.
GENERATION_METRICS = ("exact_match", "f1", "accuracy")


@dataclass
class TextPair:
    """One text-to-text example: what the encoder reads, what the decoder writes, and the texts
    a prediction is scored against."""

    source: str
    target: str
    references: list[str] = field(default_factory=list)


def text_pairs(task: DictConfig, examples: Sequence) -> list[TextPair]:
    """SQuAD questions or labelled sentences as (source, target) texts."""
    words = {str(k): str(v) for k, v in (task.get("label_words") or {}).items()}
    name = str(task.get("name", "task"))
    pairs = []
    for example in examples:
        if isinstance(example, QAExample):
            answers = list(example.answers)
            source = f"question: {example.question} context: {example.context}"
            pairs.append(TextPair(source, answers[0] if answers else "", answers))
        elif isinstance(example, TextExample) and example.label is not None:
            word = words.get(str(example.label), str(example.label))
            if example.text_pair is None:
                source = f"{name} sentence: {example.text}"
            else:
                source = f"{name} sentence1: {example.text} sentence2: {example.text_pair}"
            pairs.append(TextPair(source, word, [word]))
        else:
            raise config_error(
                "task._target_",
                "clozelab.tasks.generation.GenerationTask",
                f"cannot turn a {type(example).__name__} into a (source, target) pair",
                "use a SQuAD task (format: squad) or a labelled sentence(-pair) task",
            )
    return pairs


def decoder_start_id(decoder: Decoder, tokenizer) -> int:
    """The id the decoder starts from: [PAD] (T5) or [SEP], our eos (BART)."""
    return tokenizer.sep_id if decoder.start == "eos" else tokenizer.pad_id


def encode_generation(
    tokenizer, pairs: Sequence[TextPair], max_len: int, max_target: int, start_id: int
) -> list[dict]:
    """``input_ids``, ``token_type_ids``, ``target_ids``, ``decoder_input_ids`` per pair."""
    sources = tokenizer.encode_batch([p.source for p in pairs])
    targets = tokenizer.encode_batch([p.target for p in pairs])
    features = []
    for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
        ids = [tokenizer.cls_id, *source.ids[: max_len - 2], tokenizer.sep_id]
        target_ids = [*target.ids[: max_target - 1], tokenizer.sep_id]
        features.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * len(ids),
                "target_ids": target_ids,
                "decoder_input_ids": [start_id, *target_ids[:-1]],
                "pair_index": i,
            }
        )
    return features


class GenerationModel(nn.Module):
    """A pre-trained encoder-decoder fine-tuned text to text: ``forward(batch)`` gives the
    teacher-forced cross-entropy on the target tokens (``labels`` != -100, decoded alone);
    ``generate(batch)`` greedy outputs."""

    mode = "finetune"  # the whole model trains (no frozen-feature mode)

    def __init__(
        self,
        embedding: nn.Module,
        encoder: nn.Module,
        decoder: Decoder,
        tokenizer,
        max_target_length: int = 32,
    ):
        super().__init__()
        self.embedding, self.encoder, self.decoder = embedding, encoder, decoder
        self.tokenizer, self.max_target_length = tokenizer, int(max_target_length)
        self.start_id = decoder_start_id(decoder, tokenizer)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hidden = self.embedding(batch["input_ids"], batch.get("token_type_ids"))
        memory = self.encoder(hidden, batch["attention_mask"]).last_hidden_state
        states = self.decoder(
            batch["decoder_input_ids"], self.embedding, memory, batch["attention_mask"]
        )
        keep = batch["labels"] != -100
        logits = self.decoder.logits(states[keep], self.embedding)  # (N, V)
        return {"loss": F.cross_entropy(logits, batch["labels"][keep])}

    def generate(self, batch: dict[str, Tensor]) -> list[list[int]]:
        tok = self.tokenizer
        ids = greedy_decode(
            self.embedding,
            self.encoder,
            self.decoder,
            batch["input_ids"],
            batch["attention_mask"],
            self.start_id,
            tok.sep_id,
            tok.pad_id,
            self.max_target_length,
        )
        return [strip_after_eos(row, tok.sep_id) for row in ids.tolist()]


def score_generation(
    predictions: Sequence[str], pairs: Sequence[TextPair], names: Sequence[str]
) -> dict[str, float]:
    """``exact_match``/``f1`` (percent, best over the references) and ``accuracy`` (fraction
    of exact matches), those in ``names``."""
    unknown = [n for n in names if n not in GENERATION_METRICS]
    if unknown:
        raise config_error(
            "task.metrics",
            list(names),
            f"{unknown} are not generation metrics",
            f"use some of {list(GENERATION_METRICS)}",
        )
    scores = squad_scores(list(predictions), [p.references for p in pairs])
    hits = [
        any(normalize_answer(p) == normalize_answer(r) for r in pair.references)
        for p, pair in zip(predictions, pairs, strict=True)
    ]
    scores["accuracy"] = sum(hits) / max(len(hits), 1)
    return {k: v for k, v in scores.items() if k in names}


class GenerationTask(Task):
    """Kind ``generation``: text-to-text fine-tuning of an encoder-decoder run and greedy
    decoding (task configs name it with ``_target_: clozelab.tasks.generation.GenerationTask``)."""

    kind = "generation"
    default_metrics = ("exact_match", "f1")

    def decoder(self, backbone: Backbone) -> Decoder:
        if backbone.decoder is None:
            raise config_error(
                "task._target_",
                self.cfg.get("_target_"),
                f"task {self.cfg.get('name')!r} generates text, but the checkpoint "
                f"{backbone.source} has no decoder (an encoder-only model)",
                "fine-tune a seq2seq run (experiment=t5|bart|mass), or use the classification "
                "variant of the task on this encoder",
            )
        return backbone.decoder

    def target_length(self) -> int:
        """``task.max_target_length`` (default 32): target tokens + eos, at least 2."""
        return check_int(
            self.cfg.get("max_target_length", 32),
            "task.max_target_length",
            2,
            "the target's tokens and the eos",
            "e.g. task.max_target_length=32 (a label word: 4)",
        )

    def encode(self, splits, backbone) -> TaskData:
        tok = backbone.tokenizer
        start = decoder_start_id(self.decoder(backbone), tok)
        length = self.max_length(backbone)
        target = self.target_length()
        train = encode_generation(tok, text_pairs(self.cfg, splits["train"]), length, target, start)
        pairs = text_pairs(self.cfg, splits["validation"])
        return TaskData(train, encode_generation(tok, pairs, length, target, start), 0, [], pairs)

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        if mode != "finetune":
            raise config_error(
                "mode",
                mode,
                "text-to-text tasks fine-tune the whole model",
                "use mode=finetune for a generation task",
            )
        target = self.target_length()
        return GenerationModel(
            backbone.embedding, backbone.encoder, self.decoder(backbone), backbone.tokenizer, target
        )

    def score(self, model, data, outputs, names) -> dict:
        """Greedy outputs of every validation batch, scored against the references."""
        predictions = [""] * len(data.validation)
        for idx, batch, _ in outputs:
            for row, ids in zip(idx, model.generate(batch), strict=True):
                predictions[row] = model.tokenizer.hf.decode(ids)
        return score_generation(predictions, data.examples, names)

    def protocol(self, mode: str) -> dict:
        return {
            "decoder": "greedy",
            "max_target_length": int(self.cfg.get("max_target_length", 32)),
        }


__all__ = [
    "GENERATION_METRICS",
    "GenerationModel",
    "GenerationTask",
    "TextPair",
    "encode_generation",
    "score_generation",
    "text_pairs",
]
