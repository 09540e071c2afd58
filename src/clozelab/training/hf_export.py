"""A run as an HF transformers BERT directory (``clozelab export``, and ``RUN_DIR/hf/`` at the end
of a completed pre-training run); ERNIE 2.0 runs (the task embedding) as an HF ERNIE one
(``ErnieForMaskedLM`` / ``ErnieForPreTraining``, ``use_task_id``), XLNet runs as an
``XLNetLMHeadModel`` directory and encoder-decoder runs as T5 / BART ones (``write_run_hf_dir``
picks the family).

The weights of the run's other heads (ERNIE 2.0's capitalisation, token-document relation,
sentence distance and reordering heads, SpanBERT's SBO, ...) have no slot in HF's model: they are
written to ``clozelab_heads.safetensors`` beside it, and the export warns and says so in the
folder's ``README.md`` and ``config.json`` (``HEADS_NOTE``).

The directory holds ``config.json`` (``hidden_act`` "gelu" for the exact-erf GELU),
``model.safetensors`` in the ``BertForPreTraining`` key layout (SPECS §15; the tied decoder
aliases are left out, as safetensors saves do, and transformers re-ties them) and the tokenizer
files (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``),
so ``transformers.BertForPreTraining.from_pretrained(OUT_DIR)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` load it with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from torch import nn

from clozelab.core.errors import ClozelabError
from clozelab.core.rundir import user_mode
from clozelab.training.components import plm_objective, pretraining_heads, run_decoder

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
SPECIAL_TOKENS_MAP = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def write_hf_dir(
    out_dir: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    mlm: nn.Module | None = None,
    nsp: nn.Module | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of these modules to ``out_dir``.

    The weights are written to a temporary name and renamed, so a crash leaves no half file.
    Raises a ClozelabError when the modules are not an HF BERT (another embedding or encoder,
    an MLM head with its own activation or epsilon).
    """
    from clozelab.model.hf import hf_config_dict, to_hf_state_dict

    out = Path(out_dir)
    config = hf_config_dict(embedding, encoder, mlm=mlm, nsp=nsp, torch_dtype="float32")
    state = to_hf_state_dict(embedding, encoder, mlm, nsp, include_tied=False)
    if mlm is None and nsp is None:  # BertModel layout: no prefix
        state = to_hf_state_dict(embedding, encoder, prefix="", include_tied=False)
    _write_weights(out, state, config)
    _write_tokenizer(out, tokenizer_dir)
    return out


def _save_safetensors(path: Path, state: dict) -> None:
    """``state`` to ``path`` through a temporary name, with the user's usual file mode."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    user_mode(tmp)  # safetensors creates its files 0600
    os.replace(tmp, path)


def _write_weights(out: Path, state: dict, config: dict) -> None:
    """model.safetensors (through a temporary name) and config.json."""
    _save_safetensors(out / "model.safetensors", state)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def _write_tokenizer(out: Path, tokenizer_dir: str | Path | None) -> None:
    """The run's tokenizer files and special_tokens_map.json (BERT's special tokens)."""
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, out / name)
        if not (out / "tokenizer_config.json").is_file():
            config = {"tokenizer_class": "BertTokenizer", "model_max_length": 512}
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
        (out / "special_tokens_map.json").write_text(
            json.dumps(SPECIAL_TOKENS_MAP, indent=2), "utf-8"
        )


def write_seq2seq_hf_dir(
    out_dir: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    decoder: nn.Module,
    tokenizer_dir: str | Path,
) -> Path:
    """An HF T5ForConditionalGeneration / BartForConditionalGeneration directory of these
    modules (``clozelab.model.hf_seq2seq``): pad = [PAD], eos = [SEP] of the run's tokenizer.
    The T5 sentinels are ids past the tokenizer's vocabulary (config vocab_size counts them)."""
    from clozelab.data.tokenizer import load_tokenizer
    from clozelab.model.hf_seq2seq import hf_config_dict, to_hf_state_dict

    tok = load_tokenizer(tokenizer_dir)
    config = hf_config_dict(embedding, encoder, decoder, tok.pad_id, tok.sep_id, tok.cls_id)
    out = Path(out_dir)
    _write_weights(out, to_hf_state_dict(embedding, encoder, decoder, include_tied=False), config)
    _write_tokenizer(out, tokenizer_dir)
    _add_sentinels(out, tok.vocab_size, int(config["vocab_size"]) - tok.vocab_size)
    if (out / "tokenizer_config.json").is_file():  # a tokenizer was exported
        _update_json(out / "tokenizer_config.json", model_input_names=list(SEQ2SEQ_INPUT_NAMES))
    return out


#: what the HF tokenizer of an encoder-decoder export returns: T5/BART take no ``token_type_ids``
#: (``model(**tok(text))`` and ``model.generate(**tok(text))`` refuse them), as their own
#: tokenizers' ``model_input_names`` say
SEQ2SEQ_INPUT_NAMES = ("input_ids", "attention_mask")


def _update_json(path: Path, **entries) -> None:
    """Set ``entries`` in the JSON object file ``path`` (created when missing)."""
    data = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    data.update(entries)
    path.write_text(json.dumps(data, indent=2), "utf-8")


def sentinel_names(n: int) -> list[str]:
    """T5's sentinel tokens in id order: ids V .. V + n - 1 are ``<extra_id_{n-1}>`` ..
    ``<extra_id_0>`` (``corruption.seq2seq.SentinelIds``: ``<extra_id_0>`` is the highest id)."""
    return [f"<extra_id_{i}>" for i in reversed(range(n))]


def _add_sentinels(out: Path, vocab_size: int, n: int) -> None:
    """Give the exported tokenizer the ``n`` sentinel ids past its vocabulary (T5 layouts) as
    special tokens, so HF tokenizers encode ``<extra_id_i>`` and decode our targets: added
    tokens of ``tokenizer.json``, lines of ``vocab.txt`` (the slow tokenizer's ids) and
    ``additional_special_tokens`` of ``special_tokens_map.json`` / ``tokenizer_config.json``."""
    if n <= 0 or not (out / "tokenizer.json").is_file():
        return
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    names = sentinel_names(n)
    fast = HFTokenizer.from_file(str(out / "tokenizer.json"))
    fast.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    if fast.token_to_id(names[0]) != vocab_size or fast.get_vocab_size() != vocab_size + n:
        raise ClozelabError(
            f"export: the tokenizer in {out} did not take the {n} T5 sentinels at ids "
            f"{vocab_size}..{vocab_size + n - 1} (it has {fast.get_vocab_size()} ids). Fix: "
            "export from the run's own tokenizer directory."
        )
    fast.save(str(out / "tokenizer.json"))
    if (out / "vocab.txt").is_file():
        with (out / "vocab.txt").open("a", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in names))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        # <extra_id_0> first, as T5
        _update_json(out / name, additional_special_tokens=list(reversed(names)))


def write_xlnet_hf_dir(
    out_dir: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    plm: nn.Module | None,
    tokenizer_dir: str | Path,
) -> Path:
    """An HF ``XLNetLMHeadModel`` directory of these modules (``clozelab.model.hf_xlnet``;
    ``lm_loss.bias`` is the PLM objective's, ``lm_loss.weight`` is tied to the word table, as
    HF saves it), or an ``XLNetModel`` one without ``plm``; pad / bos / eos are the run's
    [PAD] / [CLS] / [SEP]."""
    from clozelab.data.tokenizer import load_tokenizer
    from clozelab.model.hf_xlnet import to_hf_xlnet_state_dict, xlnet_config_dict

    tok = load_tokenizer(tokenizer_dir)
    bias = None if plm is None else plm.bias
    config = xlnet_config_dict(
        embedding,
        encoder,
        with_lm_head=plm is not None,
        pad_token_id=tok.pad_id,
        bos_token_id=tok.cls_id,
        eos_token_id=tok.sep_id,
        torch_dtype="float32",
    )
    state = to_hf_xlnet_state_dict(embedding, encoder, bias, include_tied=False)
    if plm is None:  # XLNetModel layout: no prefix
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
    out = Path(out_dir)
    _write_weights(out, state, config)
    _write_tokenizer(out, tokenizer_dir)
    return out


#: The README.md (model card) an export writes its notes into (``_write_note``).
NOTES_README = "README.md"
#: The key in config.json of the note on an encoder-decoder export whose decoder was pre-trained
#: at positions HF's decoder cannot be given (MASS, SPECS §17).
POSITIONS_KEY = "clozelab_decoder_positions"
POSITIONS_NOTE = (
    "The run's corruption gave the decoder decoder_position_ids during pre-training (MASS: each "
    "target token sits at its position in the source sentence, e.g. 17..24 for a fragment "
    "x[17:25]). HF {architecture} has no decoder_position_ids input: its decoder always places "
    "the target at positions 0..n-1 (after the cached ones when generating). The weights are "
    "exact, and this model computes what the clozelab run computes whenever the decoder "
    "positions are 0..n-1 (fine-tuning, generation). It cannot be given the positions the decoder "
    "read in pre-training, so it does not reproduce that pass where they matter (learned "
    "absolute positions, as BART's, put other position vectors there; a relative-position "
    "decoder, as T5's, differs only where the fragment's positions are not consecutive)."
)


def run_corruption_keys(run_dir: str | Path) -> set[str]:
    """The batch keys the corruption of the run in ``run_dir`` produced (its config.yaml), or an
    empty set when the directory has no config.yaml (an HF directory, a bare checkpoint)."""
    from omegaconf import OmegaConf

    from clozelab.objectives.rtd import corruption_keys

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return set()
    node = OmegaConf.load(path).get("corruption")
    return corruption_keys(node) if node is not None and node.get("_target_") else set()


def _written_config(out: Path) -> dict:
    """The config.json an export just wrote into ``out``, which its notes read."""
    return json.loads((out / "config.json").read_text("utf-8"))


def _write_note(
    out: Path, config: dict, key: str, heading: str, note: str, level=logging.WARNING
) -> None:
    """Log ``note`` (a warning by default), set it as ``key`` in config.json and add it to
    README.md (the model card, headed by ``config``'s architecture) under ``heading``."""
    log.log(level, "HF export %s: %s", out, note)
    _update_json(out / "config.json", **{key: note})
    readme = out / NOTES_README
    if not readme.is_file():
        readme.write_text(f"# clozelab export ({config['architectures'][0]})\n", "utf-8")
    with readme.open("a", encoding="utf-8") as f:
        f.write(f"\n## {heading}\n\n{note}\n")


def _note_decoder_positions(out: Path, config: dict) -> None:
    """The limit of HF's decoder, which cannot be given the pre-training decoder positions."""
    note = POSITIONS_NOTE.format(architecture=config["architectures"][0])
    _write_note(out, config, POSITIONS_KEY, "Decoder positions", note)


#: The file beside model.safetensors that keeps the weights of the run's heads HF's model has no
#: slot for, and the key of the note about them in config.json.
HEADS_FILE = "clozelab_heads.safetensors"
HEADS_KEY = "clozelab_heads_without_hf_slot"
HEADS_NOTE = (
    "The heads of the run's objectives {names} have no slot in HF {architecture} (its heads "
    "are the MLM head{nsp}), so transformers does not load them. Their weights are in {file} "
    "beside model.safetensors, under the names they have in the run's checkpoint less its "
    "'objectives.' prefix ({example}, ...): safetensors.torch.load_file reads them."
)
#: What an export whose config has ``use_task_id`` (ERNIE 2.0's task table) says about task ids.
TASK_KEY = "clozelab_task_ids"
TASK_NOTE = (
    "The run's task embedding table is ernie.embeddings.task_type_embeddings "
    "(task_type_vocab_size={rows}), added to every token's word + position + segment embedding "
    "before the LayerNorm, as the run adds it. A model called without task_type_ids gets task "
    "0, as clozelab (and ERNIE 2.0's fine-tuning) does. The run gave each objective its order "
    "of introduction in the schedule as task id ({ids}). HF takes task_type_ids of shape "
    "[batch, sequence]: repeat a sequence's task id over its tokens."
)


def _keep_other_heads(
    out: Path, config: dict, objectives: dict[str, nn.Module], exported: list
) -> None:
    """Write the parameters of ``objectives`` not among the ``exported`` modules' (tied ones
    are the same tensors) to ``HEADS_FILE`` and say so (``HEADS_NOTE``); nothing when none."""
    written = {id(p) for module in exported if module is not None for p in module.parameters()}
    left = {
        f"{name}.{key}": value.detach().contiguous().clone()
        for name, objective in objectives.items()
        for key, value in objective.named_parameters()
        if id(value) not in written
    }
    if not left:
        return
    _save_safetensors(out / HEADS_FILE, left)
    names = sorted({key.split(".", 1)[0] for key in left})
    architecture = config["architectures"][0]
    note = HEADS_NOTE.format(
        names=", ".join(names),
        architecture=architecture,
        nsp=" and the 2-way pooled NSP head" if architecture.endswith("ForPreTraining") else "",
        file=HEADS_FILE,
        example=next(iter(left)),
    )
    _write_note(out, config, HEADS_KEY, "Heads with no HF slot", note)


def run_task_order(run_dir: str | Path, objectives: dict[str, nn.Module]) -> tuple[str, ...]:
    """The objectives of the run in ``run_dir`` in the order its schedule introduces them (the
    index is the task id ``embedding=task`` adds), or () without a schedule or config.yaml."""
    from omegaconf import OmegaConf

    from clozelab.training.schedule import Schedule

    path = Path(run_dir) / "config.yaml"
    node = OmegaConf.load(path).get("schedule") if path.is_file() else None
    schedule = Schedule.from_config(node, list(objectives))
    return () if schedule is None else schedule.order


def _note_task_ids(out: Path, config: dict, task_order: tuple[str, ...]) -> None:
    if config.get("use_task_id"):
        ids = ", ".join(f"{name}={i}" for i, name in enumerate(task_order)) or "no schedule given"
        note = TASK_NOTE.format(rows=config["task_type_vocab_size"], ids=ids)
        _write_note(out, config, TASK_KEY, "Task ids", note, level=logging.INFO)


def write_run_hf_dir(
    out_dir: str | Path,
    embedding: nn.Module,
    encoder: nn.Module,
    objectives: dict[str, nn.Module],
    tokenizer_dir: str | Path,
    corruption_keys: set[str] | frozenset[str] = frozenset(),
    task_order: tuple[str, ...] = (),
) -> Path:
    """A run's modules as the HF directory of their family: an encoder-decoder run as T5 / BART,
    an encoder whose ``hf_model_type`` is ``xlnet`` as ``XLNetLMHeadModel``, anything else as
    ``BertForPreTraining`` (``ErnieForPreTraining`` for ERNIE 2.0's task embedding; a
    ClozelabError for components it cannot map), with the other heads' weights in
    ``HEADS_FILE`` and the ERNIE task ids explained (``TASK_NOTE``).

    ``corruption_keys``: the batch keys the run's corruption produced (``run_corruption_keys``);
    with ``decoder_position_ids`` (MASS) the export warns and writes the limit of the HF model
    into its README.md and config.json (``POSITIONS_NOTE``). ``task_order``: the objectives in
    the order the schedule introduced them (``run_task_order``), named in the task-id note."""
    for name in (NOTES_README, HEADS_FILE):  # notes of an earlier export (--force)
        (Path(out_dir) / name).unlink(missing_ok=True)
    decoder = run_decoder(objectives)
    if decoder is not None:  # encoder-decoder: T5 / BART layout
        out = write_seq2seq_hf_dir(out_dir, embedding, encoder, decoder, tokenizer_dir)
        if "decoder_position_ids" in corruption_keys:
            _note_decoder_positions(out, _written_config(out))
        return out
    if encoder.hf_model_type == "xlnet":
        plm = plm_objective(objectives)
        return write_xlnet_hf_dir(out_dir, embedding, encoder, plm, tokenizer_dir)
    mlm, nsp = pretraining_heads(objectives)
    out = write_hf_dir(out_dir, embedding, encoder, mlm, nsp, tokenizer_dir)
    config = _written_config(out)
    _note_task_ids(out, config, task_order)
    _keep_other_heads(out, config, objectives, [embedding, encoder, mlm, nsp])
    return out


def export_after_run(module: nn.Module, run_dir: str | Path) -> Path | None:
    """Write ``RUN_DIR/hf/`` at the end of a completed pre-training run (pretrain.py).

    Runs whose components are not an HF BERT (other encoders or embeddings) are skipped with a
    warning that says why; the run's result stands either way.
    """
    run_dir = Path(run_dir)
    objectives = dict(module.objectives)
    try:
        out = write_run_hf_dir(
            run_dir / "hf",
            module.embedding,
            module.encoder,
            objectives,
            run_dir / "tokenizer",
            run_corruption_keys(run_dir),
            run_task_order(run_dir, objectives),
        )
    except ClozelabError as exc:
        log.warning("No HF export in %s/hf: %s", run_dir, exc)
        return None
    log.info("HF transformers export: %s", out)
    return out
