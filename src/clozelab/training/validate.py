"""Cheap checks of a composed pre-training config, run before any data is read or model built.

Each failure is a ClozelabError naming the key, the value and the fix.
"""

from __future__ import annotations

import inspect

from omegaconf import DictConfig

from clozelab.core.config import component_class, target_class
from clozelab.core.errors import ClozelabError, config_error
from clozelab.core.keys import check_arguments
from clozelab.corruption.base import Corruption
from clozelab.data.instances import INSTANCE_KEYS, KINDS, SINGLE_SENTENCE
from clozelab.data.preprocess import check_data_settings
from clozelab.data.structure import MAX_SEGMENTS
from clozelab.data.token_features import TOKEN_FEATURES
from clozelab.model.compile import check_compile_settings
from clozelab.model.embeddings import Embedding
from clozelab.model.encoder import Encoder
from clozelab.objectives.base import Objective
from clozelab.training.scale import validate_trainer
from clozelab.training.validate_values import check_values

BASE_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "special_tokens_mask",
    "word_ids",
    "entity_ids",
    "sentence_ids",
)
DIALOGUE_KEYS = ("dialogue_label", "role_ids")  # dialogue batches (data.dialogue, ERNIE DLM)


def _int(cfg, key: str, minimum: int, allow_none: bool = False) -> int | None:
    value = cfg_select(cfg, key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config_error(
            key, value, f"must be an integer >= {minimum}", f"set {key}={minimum} or more"
        )
    return value


def cfg_select(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def _probability(cfg, key: str, low_open: bool, high_open: bool):
    value = cfg_select(cfg, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise config_error(key, value, "must be a number", f"set {key} to a number in [0, 1]")
    bad_low = value <= 0 if low_open else value < 0
    bad_high = value >= 1 if high_open else value > 1
    if bad_low or bad_high:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise config_error(key, value, f"must lie in {interval}", f"e.g. {key}=0.15")
    return float(value)


def validate_body(cfg: DictConfig) -> None:
    """The embedding and encoder name classes of their extension points (``Embedding``,
    ``Encoder``: the hooks clozelab asks them about); the encoder refuses what pre-training
    cannot honour (``Encoder.check_pretraining``)."""
    for key, base in (("embedding", Embedding), ("encoder", Encoder)):
        node = cfg_select(cfg, key)
        if node is not None and node.get("_target_"):
            cls = component_class(node, key, base)
            if key == "encoder":
                cls.check_pretraining(node, cfg)  # Encoder hook


def validate_model(cfg: DictConfig) -> None:
    check_compile_settings(cfg_select(cfg, "model") or {})  # model.compile*, before any data
    hidden = _int(cfg, "model.hidden_size", 1)
    heads = _int(cfg, "model.num_heads", 1)
    _int(cfg, "model.num_layers", 1)
    if hidden % heads:
        raise ClozelabError(
            f"model.hidden_size={hidden} is not divisible by model.num_heads={heads}. Fix: choose "
            f"num_heads dividing {hidden} (e.g. {max(h for h in range(1, 65) if hidden % h == 0)})."
        )
    seq = _int(cfg, "data.max_seq_length", 8)
    positions = cfg_select(cfg, "model.max_position_embeddings")
    if positions is not None and seq > positions:
        raise ClozelabError(
            f"data.max_seq_length={seq} exceeds the position table "
            f"(model.max_position_embeddings={positions}). Fix: lower data.max_seq_length or "
            "raise model.max_position_embeddings."
        )


def validate_corruption(cfg: DictConfig, run: bool = False) -> None:
    """The corruption's own arguments (``Corruption.check_node``: its constructor's checks, run
    with stand-in tokenizer ids) and the batch keys it reads against what the data provides;
    for a pre-training ``run``, also that what it writes is read (``Corruption.check_keys``).
    ``corruption.rate`` is the constructor's to check: its range depends on the scheme (a
    sentence permutation may move every sentence, rate 1)."""
    probs = [
        _probability(cfg, f"corruption.{k}", False, False)
        for k in ("mask_prob", "random_prob", "keep_prob")
    ]
    if all(p is not None for p in probs) and abs(sum(probs) - 1.0) > 1e-6:
        raise ClozelabError(
            f"corruption.mask_prob={probs[0]}, corruption.random_prob={probs[1]}, "
            f"corruption.keep_prob={probs[2]} sum to {sum(probs):.6g}, not 1. Fix: make the three "
            "proportions sum to 1 (BERT: 0.8/0.1/0.1)."
        )
    node = cfg_select(cfg, "corruption")
    if node is None or not node.get("_target_"):
        return
    cls = component_class(node, "corruption", Corruption)
    cls.check_keys(node, data_keys(cfg), read_keys(cfg) if run else None)  # Corruption hook
    cls.check_node(node)  # Corruption hook: its constructor's checks


def validate_objectives(cfg: DictConfig) -> list[str]:
    """Each objective's needs against the instance kind and the corruption's outputs."""
    objectives = cfg_select(cfg, "objective")
    if not objectives:
        raise ClozelabError("objective: no objective selected. Fix: e.g. objective=[mlm,nsp].")
    kind = cfg_select(cfg, "data.instances")
    corruption = cfg_select(cfg, "corruption")
    corrupted = set()
    if corruption is not None and corruption.get("_target_"):
        corruption_cls = component_class(corruption, "corruption", Corruption)
        corrupted = set(corruption_cls.produces_for(corruption))  # Compose: its steps' keys
    _refuse_unread_targets(cfg, objectives, corrupted)
    # Keys of each batch stream: text instances, and dialogue triples when data.dialogue is set.
    provided = {"text": data_keys(cfg) | corrupted}
    if cfg_select(cfg, "data.dialogue.corpus"):
        provided["dialogue"] = set(BASE_KEYS) | set(DIALOGUE_KEYS) | corrupted
    names = []
    for name, node in objectives.items():
        cls = component_class(node, f"objective.{name}", Objective)
        kinds = cls.instance_kinds
        if not cls.supports(kind):
            raise ClozelabError(
                f"objective.{name} needs data.instances in {list(kinds)}, but "
                f"data.instances={kind!r}. Fix: set data.instances={kinds[0]} or drop {name} "
                f"from objective."
            )
        missing = cls.missing_keys(provided)
        if missing:
            raise ClozelabError(
                f"objective.{name} needs the batch keys {missing}, which neither "
                f"data.instances={kind!r} nor corruption "
                f"({corruption.get('_target_') if corruption else None}) provides. Fix: "
                f"{cls.requires_fix}."
            )
        table = cfg_select(cfg, "embedding.embedding_size")  # width of a factorized table
        tied = "embedding_size" in inspect.signature(cls).parameters  # a tied decoder
        if tied and node.get("embedding_size") != table:
            raise config_error(
                f"objective.{name}.embedding_size",
                node.get("embedding_size"),
                f"its decoder is tied to the embedding table of width {table} "
                "(embedding.embedding_size; null: the hidden size)",
                f"set objective.{name}.embedding_size=${{embedding.embedding_size}}",
            )
        cls.check_config(cfg, name)  # combinations beyond batch keys
        names.append(name)
    return names


def read_keys(cfg: DictConfig) -> set[str]:
    """The batch keys a pre-training run reads: its objectives' ``requires`` and the extra
    inputs of its embedding and encoder (``batch_inputs``)."""
    keys = set()
    for name, node in (cfg_select(cfg, "objective") or {}).items():
        keys |= set(component_class(node, f"objective.{name}", Objective).requires)
    for key, base in (("embedding", Embedding), ("encoder", Encoder)):
        node = cfg_select(cfg, key)
        if node is not None and node.get("_target_"):
            keys |= set(component_class(node, key, base).batch_inputs)
    return keys


def data_keys(cfg: DictConfig) -> set[str]:
    """The keys of a text batch before corruption: the base keys, the instance kind's labels,
    the per-token features and, with ``data.entity_links``, the entity each mention names."""
    keys = set(BASE_KEYS) | set(INSTANCE_KEYS.get(cfg_select(cfg, "data.instances"), ()))
    keys |= set(token_features(cfg))  # ERNIE 2.0's per-token labels
    if cfg_select(cfg, "data.entity_links"):  # the entity each mention names (ERNIE-THU)
        keys.add("entity_links")
    return keys


def token_features(cfg: DictConfig) -> tuple[str, ...]:
    """The per-token labels the text batches can carry (``data.token_features``): the
    token-document relation always, case labels when the shards keep case flags."""
    return tuple(
        f for f in TOKEN_FEATURES if f != "case_labels" or cfg_select(cfg, "data.case_flags")
    )


def validate_schedule(cfg: DictConfig, names: list[str]) -> None:
    """``schedule`` (continual multi-task pre-training): its stages against the objectives and
    the budget, and a task table that fits it."""
    from clozelab.training.schedule import Schedule

    schedule = Schedule.from_config(cfg_select(cfg, "schedule"), names)
    embedding = cfg_select(cfg, "embedding")
    tasks = None
    table = (
        embedding is not None
        and embedding.get("_target_")
        and "num_tasks" in (inspect.signature(target_class(embedding, "embedding")).parameters)
    )
    if table:
        tasks = embedding.get("num_tasks")
    if schedule is None:
        return
    max_steps = cfg_select(cfg, "trainer.max_steps")
    schedule.check_budget(max_steps, cfg_select(cfg, "trainer.max_tokens"))
    if tasks is not None and schedule.mix == "joint":
        raise config_error(
            "schedule.mix",
            "joint",
            "a joint step trains several tasks on one input, so the task "
            "embedding has no single task id to add",
            "set schedule.mix=round_robin (ERNIE 2.0) or use embedding=bert",
        )
    if tasks is not None and isinstance(tasks, int) and tasks < len(schedule.order):
        raise config_error(
            "embedding.num_tasks",
            tasks,
            f"the schedule has {len(schedule.order)} objectives, one task id each",
            f"set embedding.num_tasks={len(schedule.order)} or more",
        )


def _refuse_unread_targets(cfg: DictConfig, objectives, corrupted: set[str]) -> None:
    """A seq2seq corruption (it writes ``labels`` + ``decoder_input_ids``) needs an objective
    with a decoder that reads them: an encoder-only model cannot use (source, target) pairs."""
    from clozelab.objectives.seq2seq import TARGET_KEYS

    decoder = cfg_select(cfg, "decoder")
    if decoder is not None and not any(n.get("decoder") is not None for n in objectives.values()):
        raise config_error(
            "decoder",
            decoder.get("_target_"),
            f"no objective of objective={list(objectives)} runs a decoder",
            "add objective=[seq2seq] (encoder-decoder pre-training) or drop decoder=",
        )
    if not set(TARGET_KEYS) <= corrupted:
        return
    readers = [
        name
        for name, node in objectives.items()
        if set(TARGET_KEYS) <= set(target_class(node, f"objective.{name}").requires)
    ]
    if not readers:
        raise ClozelabError(
            f"corruption ({cfg.corruption.get('_target_')}) produces seq2seq (source, target) "
            f"pairs {list(TARGET_KEYS)}, but objective={list(objectives)} is encoder-only and "
            "cannot read them. Fix: objective=[seq2seq] with decoder=t5 or decoder=bart "
            "(experiment=t5|bart|mass), or an encoder corruption such as corruption=mask."
        )


def validate_dialogue(cfg: DictConfig) -> None:
    """``data.dialogue`` (ERNIE DLM batches): its knobs, a role table in the embedding, and an
    objective that trains on dialogue batches. Nothing to check without a dialogue corpus."""
    node = cfg_select(cfg, "data.dialogue")
    if node is None or not node.get("corpus"):
        return
    from clozelab.data.dialogue_instances import PATTERNS
    from clozelab.data.dialogue_stream import SCHEDULES

    corpus = node.get("corpus")
    if node.get("schedule") not in SCHEDULES:
        raise config_error(
            "data.dialogue.schedule",
            node.get("schedule"),
            "unknown schedule",
            f"use one of {list(SCHEDULES)}",
        )
    if node.get("schedule") == "alternate":
        _int(cfg, "data.dialogue.every", 2)
    _int(cfg, "data.dialogue.batch_size", 1)
    _probability(cfg, "data.dialogue.fake_rate", False, False)
    _probability(cfg, "data.dialogue.validation_fraction", False, True)
    patterns = list(node.get("patterns") or [])
    if not patterns or set(patterns) - set(PATTERNS):
        raise config_error(
            "data.dialogue.patterns",
            patterns,
            f"must be a non-empty subset of {list(PATTERNS)}",
            "e.g. data.dialogue.patterns=[QRQ,QRR,QQR]",
        )
    embedding = cfg_select(cfg, "embedding")
    if embedding is not None and embedding.get("_target_"):
        cls = target_class(embedding, "embedding")
        if "num_roles" not in inspect.signature(cls).parameters:
            raise ClozelabError(
                f"data.dialogue.corpus={corpus!r}: dialogue batches carry role_ids (Q/R), but "
                f"embedding ({embedding._target_}) has no role table. Fix: add embedding=role."
            )
    objectives = cfg_select(cfg, "objective") or {}
    streams = [
        component_class(n, f"objective.{k}", Objective).streams for k, n in objectives.items()
    ]
    if not any("dialogue" in s for s in streams):
        raise ClozelabError(
            f"data.dialogue.corpus={corpus!r}, but none of objective={list(objectives)} trains on "
            "dialogue batches. Fix: add dlm (e.g. objective=[mlm,nsp,dlm]) or set "
            "data.dialogue.corpus=null."
        )


def validate_data(cfg: DictConfig) -> None:
    kind = cfg_select(cfg, "data.instances")
    if kind not in KINDS:
        raise config_error(
            "data.instances", kind, "unknown instance kind", f"use one of {list(KINDS)}"
        )
    _int(cfg, "data.batch_size", 1)
    _int(cfg, "data.pad_to_multiple_of", 1)
    _int(cfg, "data.num_workers", 0)
    _probability(cfg, "data.short_seq_prob", False, False)
    check_data_settings(cfg.data)  # held-out fraction, entity/phrase sources (gazetteer file)
    single = cfg_select(cfg, "data.sop_single_sentence")
    if single is not None and single not in SINGLE_SENTENCE:
        raise config_error(
            "data.sop_single_sentence",
            single,
            f"must be one of {list(SINGLE_SENTENCE)}",
            "set data.sop_single_sentence=split (the paper's swap-only SOP)",
        )
    if kind == "structure":  # ERNIE 2.0 structure rows
        _probability(cfg, "data.reorder_share", False, False)
        segments = cfg_select(cfg, "data.reorder_segments")
        if (
            isinstance(segments, bool)
            or not isinstance(segments, int)
            or not (1 <= segments <= MAX_SEGMENTS)
        ):
            raise config_error(
                "data.reorder_segments",
                segments,
                f"must be an integer in [1, {MAX_SEGMENTS}]",
                "set data.reorder_segments=3 (the paper uses 3 or 4)",
            )
    if not cfg_select(cfg, "data.corpus"):
        raise config_error("data.corpus", None, "no corpus given", "set data.corpus=PATH")


def validate_budget(cfg: DictConfig) -> None:
    steps = cfg_select(cfg, "trainer.max_steps")
    tokens = _int(cfg, "trainer.max_tokens", 1, allow_none=True)
    time_ = cfg_select(cfg, "trainer.max_time")
    epochs = cfg_select(cfg, "trainer.max_epochs")
    if (
        (steps is None or steps < 0)
        and tokens is None
        and time_ is None
        and (epochs is None or epochs < 0)
    ):
        raise ClozelabError(
            "trainer: no budget (max_steps, max_tokens, max_time or max_epochs). Fix: set one, "
            "e.g. trainer.max_steps=1000."
        )


def validate_pretrain(cfg: DictConfig) -> list[str]:
    check_arguments(cfg)  # trainer/optim/scheduler/logger keys against what reads them
    check_values(cfg)  # types and ranges of seed, optim, scheduler, trainer
    validate_data(cfg)
    validate_model(cfg)
    validate_body(cfg)
    validate_budget(cfg)
    validate_dialogue(cfg)
    validate_trainer(cfg.trainer)  # presets, precision, devices against this machine
    names = validate_objectives(cfg)
    validate_corruption(cfg, run=True)  # after the objectives: theirs is the clearer refusal
    validate_schedule(cfg, names)
    reference = cfg.get("validation_reference")
    if reference is not None and "mlm" not in names:
        raise ClozelabError(
            f"validation_reference: scores MLM, but objective={names} has no mlm. Fix: add mlm "
            "to objective, or set validation_reference=null."
        )
    if reference is not None:  # a second corruption: its constructor's checks now as well
        component_class(reference, "validation_reference", Corruption).check_node(reference)
    return names
