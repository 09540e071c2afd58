"""The Python API: ``clozelab.load`` and ``clozelab.load_tokenizer``.

``load`` takes a clozelab run directory (``config.yaml`` + ``checkpoints/``), a Lightning
checkpoint file of such a run, or an HF BERT or XLNet directory (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``), and returns a ``ClozelabModel`` in eval mode::

    model = clozelab.load("outputs/2026-01-01/10-00-00")
    tok = clozelab.load_tokenizer("outputs/2026-01-01/10-00-00")
    batch = tok(["a sentence", "another one"], padding=True, return_tensors="pt")
    out = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out.last_hidden_state  # [B, T, H]; out.hidden_states: embedding output + every layer
    model.encode(**batch, task_ids=2)  # an ERNIE 2.0 model at task 2 (default: row 0)
    model.mlm_logits(batch["input_ids"], batch["attention_mask"])  # [B, T, V]
    model.embed(["a sentence", "another one"], layers=[-4, -3, -2, -1], pool="mean")  # [2, H]

"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clozelab.core.errors import ClozelabError, config_error
from clozelab.core.rundir import run_checkpoint
from clozelab.training.components import log_load_report, plm_objective, pretraining_heads
from clozelab.training.loading import load_checkpoint

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the model object
class ClozelabModel(nn.Module):
    """An embedding, an encoder and (when the checkpoint has them) the MLM and NSP heads, or
    XLNet's permutation-LM head.

    Attributes:
        embedding, encoder: the body.
        mlm, nsp: the MLM / NSP objectives (their heads), or None.
        plm: the permutation-LM objective (XLNet's ``lm_loss`` bias; decoder tied), or None.
        decoder: the decoder of an encoder-decoder run (T5 / BART), or None.
        objectives: every objective module of the run, by name (what ``clozelab export`` writes).
        source: where the weights came from.
        family: the HF family of what was loaded (``bert``, ``ernie``, ``xlnet``, ...: an HF
            directory's ``model_type``), named in what a refusal tells to load instead.
        load_report: ``{"missing": [...], "unexpected": [...]}`` of the weight loading.
    """

    def __init__(
        self,
        embedding,
        encoder,
        mlm=None,
        nsp=None,
        source: str = "",
        report=None,
        tokenizer=None,
        decoder=None,
        plm=None,
        objectives: dict | None = None,
        family: str = "bert",
    ):
        super().__init__()
        self.embedding, self.encoder, self.mlm, self.nsp = embedding, encoder, mlm, nsp
        self.plm = plm
        self.decoder = decoder  # encoder-decoder runs: the seq2seq objective's decoder
        heads = {"mlm": mlm, "nsp": nsp, "plm": plm}
        self.objectives = (
            dict(objectives)
            if objectives is not None
            else {name: head for name, head in heads.items() if head is not None}
        )  # a plain dict: the modules are registered once, as the attributes above
        self.source, self.family = source, family
        self.load_report = report or {"missing": [], "unexpected": []}
        self.tokenizer = tokenizer  # clozelab Tokenizer (or a path to load it from), for embed

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.word_embeddings.weight.shape[0])

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        task_ids: Tensor | int | None = None,
    ):
        """``EncoderOutput``: ``.last_hidden_state`` [B, T, H] and ``.hidden_states`` (the
        embedding output, then every layer's output, as HF's ``output_hidden_states``).

        ``task_ids``: ERNIE 2.0's task of each sequence ([B]), of each token ([B, T]) or one int
        for all, for a model with a task table (``embedding=task``, an HF ERNIE directory with
        ``use_task_id``); None is task 0. A model without one refuses them."""
        input_ids, token_type_ids = _as_batch(input_ids), _as_batch(token_type_ids)
        hidden = self.embedding(input_ids, token_type_ids, **self._task_inputs(input_ids, task_ids))
        extra = {}  # what the encoder reads from the batch (XLNet: relative segments)
        if token_type_ids is not None and "token_type_ids" in self.encoder.batch_inputs:
            extra["token_type_ids"] = token_type_ids
        return self.encoder(hidden, _as_batch(attention_mask), output_hidden_states=True, **extra)

    def _task_inputs(self, input_ids: Tensor, task_ids) -> dict[str, Tensor]:
        """``{"task_ids": [B] or [B, T]}`` for the embedding, checked by it (its
        ``check_inputs`` hook), or {} without task ids."""
        if task_ids is None:
            return {}
        if "task_ids" not in self.embedding.batch_inputs:  # Embedding hook: no task table
            raise config_error(
                "task_ids",
                _shown(task_ids),
                f"{self.source}: this model's embedding ({type(self.embedding).__name__}) has no "
                "task table (ERNIE 2.0's task embedding)",
                "leave task_ids out for this model; encode at a task with a model that has one: "
                "a run with embedding=task (experiment=ernie2) or an HF ERNIE directory whose "
                "config.json has use_task_id: true",
            )
        task_ids = torch.as_tensor(task_ids, device=input_ids.device)
        if task_ids.dim() == 0:  # one task for every sequence
            task_ids = task_ids.expand(input_ids.shape[0])
        self.embedding.check_inputs(input_ids, task_ids=task_ids)
        return {"task_ids": task_ids}

    def _refuse_missing_head(self, head: str, objective: str, architectures: str) -> None:
        """A ClozelabError: the loaded checkpoint has no ``head``; the fix names the run's
        ``objective`` setting and the HF ``architectures`` of the loaded family."""
        from clozelab.model.hf import FAMILIES

        prefix = FAMILIES.get(self.family, FAMILIES["bert"])  # a BERT-family class name
        raise ClozelabError(
            f"{self.source}: this checkpoint has no {head} head. Fix: load a checkpoint trained "
            f"with {objective} or an HF {architectures.format(prefix)} directory."
        )

    def mlm_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        task_ids: Tensor | int | None = None,
    ) -> Tensor:
        """Masked-LM logits [B, T, V] at every position (tied decoder); ``task_ids`` as
        ``encode``'s."""
        if self.mlm is None:
            self._refuse_missing_head(
                "MLM", "objective=[mlm,...]", "{0}ForPreTraining / {0}ForMaskedLM"
            )
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task_ids)
        return self.mlm.logits(hidden.last_hidden_state, self.embedding)

    def nsp_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        task_ids: Tensor | int | None = None,
    ) -> Tensor:
        """Next-sentence logits [B, 2] (0 = B follows A); ``task_ids`` as ``encode``'s."""
        if self.nsp is None:
            self._refuse_missing_head("NSP", "objective=[mlm,nsp]", "{0}ForPreTraining")
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task_ids)
        return self.nsp.logits(hidden.last_hidden_state)

    def plm_logits(
        self,
        input_ids: Tensor,
        perm_mask: Tensor,
        target_mapping: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """XLNet's permutation-LM logits [B, M, V] (HF ``XLNetLMHeadModel(...).logits``):
        ``perm_mask`` [B, T, T] (1: i may not see j), ``target_mapping`` [B, M, T] (row m one-hot
        at the m-th predicted position)."""
        if self.plm is None:
            raise ClozelabError(
                f"{self.source}: this checkpoint has no permutation-LM head. Fix: load a "
                "checkpoint trained with experiment=xlnet or an HF XLNetLMHeadModel directory."
            )
        input_ids, token_type_ids = _as_batch(input_ids), _as_batch(token_type_ids)
        out = self.encoder(
            self.embedding(input_ids),
            _as_batch(attention_mask),
            token_type_ids=token_type_ids,
            perm_mask=_as_batch(perm_mask),
            target_mapping=_as_batch(target_mapping),
        )
        return self.plm.logits(out.query_hidden_state, self.embedding)

    def embed(
        self,
        texts,
        layers=-1,
        pool: str = "mean",
        batch_size: int = 64,
        task_id: int | None = None,
    ):
        """Vectors of ``texts`` in one call, each encoded alone as ``[CLS] text [SEP]``.

        ``layers``: a hidden-state index (-1: the last layer, 0: the embedding output) or a list
        of them, averaged (``[-4, -3, -2, -1]``: the average of the last four layers, the seeds'
        feature-based recipe). ``pool``: ``mean`` over the text's tokens ([CLS]/[SEP] excluded)
        or ``cls`` -> ``[N, H]``; ``none`` -> one ``[n_tokens, H]`` tensor per text.
        ``task_id``: ERNIE 2.0's task every text is encoded at (``encode``'s ``task_ids``).
        """
        from clozelab.model.layer_pool import embed_texts

        if self.tokenizer is None:
            raise ClozelabError(
                f"{self.source}: no tokenizer is known for this model. Fix: load it with "
                "clozelab.load(path) from a run or HF directory that holds its tokenizer, or set "
                "model.tokenizer = clozelab.data.tokenizer.load_tokenizer(path)."
            )
        if isinstance(self.tokenizer, (str, Path)):
            from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer

            self.tokenizer = load_clozelab_tokenizer(self.tokenizer)
        self.eval()
        limit = int(getattr(self.embedding, "max_position_embeddings", 512))

        def encode(input_ids, attention_mask, token_type_ids):
            return self.encode(input_ids, attention_mask, token_type_ids, task_id).hidden_states

        return embed_texts(
            encode,
            self.tokenizer,
            texts,
            layers=layers,
            pool=pool,
            max_length=limit,
            batch_size=batch_size,
        )

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, task_ids=None):
        return self.encode(input_ids, attention_mask, token_type_ids, task_ids)


def _as_batch(x: Tensor | None) -> Tensor | None:
    if x is None:
        return None
    x = torch.as_tensor(x)
    return x[None] if x.dim() == 1 else x


def _shown(value) -> object:
    """``value`` for an error message: a tensor's ids when short, else its shape."""
    if isinstance(value, Tensor):
        return value.tolist() if value.numel() <= 8 else f"tensor of shape {list(value.shape)}"
    return value


# ---------------------------------------------------------------------------- loading
def load(path: str | Path) -> ClozelabModel:
    """Load a model from a clozelab run directory, a checkpoint file or an HF BERT / XLNet
    directory (``clozelab.training.loading.load_checkpoint``).

    HF directories load every head their weights hold (``cls.predictions.*`` -> ``mlm``,
    ``cls.seq_relationship.*`` -> ``nsp``, ``lm_loss.bias`` -> ``plm``); a ``BertModel``
    directory loads the body only. The model comes back on the CPU, in eval mode, with
    ``load_report`` telling what was missing or left over.
    """
    loaded = load_checkpoint(path)
    hf = loaded.kind == "hf"
    if hf:
        log_load_report(str(loaded.root), loaded.report)
    else:
        loaded.check_complete()
    mlm, nsp = pretraining_heads(loaded.objectives)
    return ClozelabModel(
        loaded.embedding,
        loaded.encoder,
        mlm,
        nsp,
        source=str(loaded.root if hf else loaded.weights),
        report=loaded.report,
        tokenizer=loaded.root if hf else loaded.tokenizer_dir,
        decoder=None if hf else loaded.decoder,  # HF directories load the body and heads only
        plm=plm_objective(loaded.objectives),
        objectives=None if hf else loaded.objectives,  # HF: the heads above, by name
        family=loaded.hf_family,
    ).eval()


def load_tokenizer(path: str | Path, **kwargs: Any):
    """A ``transformers.PreTrainedTokenizerFast`` for a run dir, checkpoint or HF directory.

    Encodes with [CLS]/[SEP] and pads on request: ``tok(texts, padding=True,
    return_tensors="pt")`` gives ``input_ids``, ``token_type_ids`` and ``attention_mask`` for
    ``model.encode``. ``kwargs`` go to ``PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    from clozelab.data.tokenizer import load_tokenizer as load_clozelab_tokenizer

    resolved = Path(path).expanduser()
    if resolved.is_file() and resolved.suffix in (".ckpt", ".safetensors", ".bin"):
        resolved = run_checkpoint(resolved)[0] if resolved.suffix == ".ckpt" else resolved.parent
    tokenizer = load_clozelab_tokenizer(resolved)
    options = dict(
        tokenizer_object=tokenizer.hf,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
        do_lower_case=tokenizer.lowercase,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    options.update(kwargs)
    return PreTrainedTokenizerFast(**options)
