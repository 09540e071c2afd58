"""The objective contract (DESIGN §3).

An objective is an ``nn.Module`` that owns its head(s) and its loss:
``objective(encoder_output, batch, embedding) -> ObjectiveOutput(loss, n_targets, logs)``.
Each subclass declares the batch keys it reads (``requires``) and the instance kinds it can
train on (``instance_kinds``), so an impossible combination is refused when the config is
composed, before any data is read. The total pre-training loss is ``sum(weight * loss)``.

Losses that average over targets pass through ``global_mean``: inside ``data_parallel`` (a
training step on several ranks) it turns a rank's mean into that rank's share of the mean over
the whole global batch (SPECS §5 pitfall), so the averaged gradients equal one process's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error

#: (world size, sum across ranks) while a data-parallel training step runs; None otherwise.
_DATA_PARALLEL: ContextVar[tuple[int, Callable[[Tensor], Tensor]] | None] = ContextVar(
    "clozelab_data_parallel", default=None
)


@contextmanager
def data_parallel(world_size: int, all_reduce_sum: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Make ``global_mean`` average over the global batch of ``world_size`` ranks whose gradients
    are averaged (DDP, FSDP, DeepSpeed and XLA all do); ``all_reduce_sum`` sums a tensor over the
    ranks (every rank must make the same calls). A no-op on one rank."""
    if world_size <= 1:
        yield
        return
    token = _DATA_PARALLEL.set((int(world_size), all_reduce_sum))
    try:
        yield
    finally:
        _DATA_PARALLEL.reset(token)


def global_mean(local_mean: Tensor, n: Tensor | int, offset: int = 0) -> Tensor:
    """This rank's share of a mean over the whole global batch.

    ``local_mean`` is ``sum / d`` over this rank's ``n`` targets, with ``d = n + offset``
    (SpanBERT's ``n + 1``) or, when ``offset`` is 0, ``d = max(n, 1)``. Inside
    ``data_parallel`` on ``w`` ranks it returns ``sum * w / D`` (``D`` from the targets of all
    ranks), so that the mean of the ranks' values, and of their gradients, is
    ``sum over ranks / D``: the global mean, not the mean of per-rank means, which differs
    whenever ranks hold different counts. Elsewhere (one process, validation) it returns
    ``local_mean`` unchanged.
    """
    context = _DATA_PARALLEL.get()
    if context is None:
        return local_mean
    world, all_reduce_sum = context
    count = torch.as_tensor(n, device=local_mean.device).to(torch.float64).reshape(())
    total = all_reduce_sum(count.clone())
    if offset:
        local, whole = count + offset, total + offset
    else:
        local, whole = count.clamp_min(1), total.clamp_min(1)
    return local_mean * (local * world / whole).to(local_mean.dtype)


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    Attributes:
        loss: scalar, already averaged over ``n_targets`` (unweighted; the caller applies
            ``objective.weight``); in a data-parallel training step, this rank's share of the
            global-batch mean (``global_mean``).
        n_targets: how many targets the loss averages over (predicted tokens for MLM,
            sequences for NSP), for token-weighted reduction across batches and devices.
        logs: detached scalars to log, named ``<objective>_<metric>`` (e.g. ``mlm_acc``).
        weights: the denominator of a log that is not averaged over ``n_targets`` (RTD's
            generator loss over the masked tokens, SBO's ``n + 1``); validation reports each
            log as sum(value x weight) / sum(weight) over the batches, i.e. exactly the mean
            over the whole validation set.
        loss_terms: the loss as ``sum(coefficient x logs[key])`` when it adds means over
            different targets (RTD: generator + discriminator); None: the loss is its one
            ``*_loss`` log. Validation rebuilds the loss (and ``val/loss``) from these terms'
            exact means.
    """

    loss: Tensor
    n_targets: Tensor | int
    logs: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, Tensor | int] = field(default_factory=dict)
    loss_terms: dict[str, float] | None = None

    def weight(self, key: str) -> Tensor | int:
        """How many targets the log ``key`` averages over."""
        return self.weights.get(key, self.n_targets)

    @property
    def loss_key(self) -> str:
        """The log that is the loss itself: the one ``*_loss`` log not among ``loss_terms``."""
        keys = [k for k in self.logs if k.endswith("_loss") and k not in (self.loss_terms or {})]
        if len(keys) != 1:
            raise ValueError(
                f"ObjectiveOutput: the loss must be exactly one *_loss log, got {keys}"
            )
        return keys[0]

    def terms(self) -> dict[str, float]:
        """The loss as logged means and their coefficients."""
        return dict(self.loss_terms) if self.loss_terms else {self.loss_key: 1.0}


class Objective(nn.Module):
    """Base class of every pre-training objective.

    Class attributes a subclass sets:
        name: short name used in logs and configs ("mlm", "nsp", ...).
        requires: batch keys ``forward`` reads besides the encoder output.
        instance_kinds: instance kinds the objective works with (e.g. ``("segment_pair",)``
            for NSP), or None for any.
        streams: the batches it trains on: ``"text"`` (the corpus instances) and/or
            ``"dialogue"`` (ERNIE DLM triples, ``data.dialogue``); MLM trains on both.
        requires_fix: the fix a compose-time error names when ``requires`` is not produced.
        rewrites_inputs: True when ``prepare_inputs`` rewrites the batch before the encoder
            (ELECTRA's generator, the causal LM restoring the original tokens); at most one
            objective of a run may.
        reads_encoder_output: False when ``forward`` never reads the encoder output's
            ``last_hidden_state`` (XLNet's PLM reads the query stream only); when no objective
            of a step reads it, an encoder that ``skips_unread_output`` does not compute it.

    Hooks a subclass may override: ``check_config`` (refuse combinations beyond batch keys at
    compose time), ``prepare_inputs`` and ``compile_targets`` (what ``model.compile`` compiles).
    A user's objective in their own module subclasses this and is selected with
    ``+objective.NAME._target_=mymodule.MyObjective``-style overrides (or a config file of the
    objective group).

    Args:
        weight: factor of this objective's loss in the total loss.
    """

    name: ClassVar[str] = "objective"
    requires: ClassVar[tuple[str, ...]] = ()
    instance_kinds: ClassVar[tuple[str, ...] | None] = None
    streams: ClassVar[tuple[str, ...]] = ("text",)
    requires_fix: ClassVar[str] = "choose a corruption that produces them"
    rewrites_inputs: ClassVar[bool] = False
    reads_encoder_output: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        weight = float(weight)
        if not weight >= 0.0:
            raise config_error(
                f"objective.{self.name}.weight",
                weight,
                "an objective weight must be >= 0",
                "use a non-negative weight (1.0 = the reference recipes)",
            )
        self.weight = weight

    def forward(
        self, encoder_output: Any, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        """Compute this objective's loss; ``encoder_output`` is an ``EncoderOutput``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def summary_pooler(self) -> nn.Module | None:
        """The [CLS] pooler this objective trains (NSP, SOP), which a downstream sentence head
        starts from; None for the others."""
        return None

    def seq2seq_decoder(self) -> nn.Module | None:
        """The decoder this objective trains, for encoder-decoder runs (export to HF T5/BART,
        text-to-text fine-tuning); None for the encoder-only objectives."""
        return None

    def compile_targets(self) -> dict[str, nn.Module]:
        """The submodules ``model.compile`` compiles in place, by their name in this objective
        (a decoder's layers); the default: none, the objective runs eagerly."""
        return {}

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """Refuse, with a ClozelabError naming the key and the fix, a composed config this
        objective (``objective.<name>``) cannot train with for reasons beyond batch keys and
        instance kinds (the encoder, the corruption's options ...). Called before any data is
        read; the default accepts every config."""

    def prepare_inputs(self, batch: Mapping[str, Tensor], embedding: nn.Module) -> dict:
        """The batch the encoder sees, when ``rewrites_inputs``: called on every training and
        validation batch before embedding. The default returns ``batch`` unchanged."""
        return dict(batch)

    @classmethod
    def missing_keys(cls, provided: Mapping[str, Iterable[str]]) -> list[str]:
        """The keys of ``requires`` missing from a batch stream this objective trains on;
        ``provided`` maps each stream of the run (``text``, ``dialogue``) to its batch keys."""
        streams = [s for s in cls.streams if s in provided]
        if not streams:
            return list(cls.requires)
        return [k for k in cls.requires if any(k not in set(provided[s]) for s in streams)]

    @classmethod
    def supports(cls, instance_kind: str) -> bool:
        """Whether this objective can train on instances of kind ``instance_kind``."""
        return cls.instance_kinds is None or instance_kind in cls.instance_kinds

    @classmethod
    def check_compatible(
        cls, instance_kind: str | None = None, batch_keys: Iterable[str] | None = None
    ) -> None:
        """Refuse an impossible combination before any data is read.

        Raises a ClozelabError when ``instance_kind`` is not one this objective supports, or
        when ``batch_keys`` (the keys the data pipeline and corruption will produce) miss one
        of ``requires``.
        """
        if instance_kind is not None and not cls.supports(instance_kind):
            raise config_error(
                "data.instances",
                instance_kind,
                f"objective {cls.name!r} needs instances of kind {list(cls.instance_kinds or [])}",
                f"build {' or '.join(cls.instance_kinds or [])} instances or drop {cls.name!r} "
                "from objective=[...]",
            )
        if batch_keys is not None:
            missing = cls.missing_keys({stream: batch_keys for stream in cls.streams})
            if missing:
                raise config_error(
                    "objective",
                    cls.name,
                    f"needs batch keys {missing} that the data/corruption does not produce",
                    "pick a corruption or instance builder that produces them",
                )

    def check_batch(self, batch: Mapping[str, Tensor]) -> None:
        """Raise a ClozelabError naming the first key of ``requires`` missing from ``batch``."""
        for key in self.requires:
            if key not in batch:
                raise config_error(
                    "objective",
                    self.name,
                    f"the batch has no {key!r} (keys: {sorted(batch)})",
                    "pick a corruption or instance builder that produces it",
                )

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
