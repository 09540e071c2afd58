"""TransE entity embeddings (Bordes et al. 2013, "Translating Embeddings for Modeling
Multi-relational Data", Algorithm 1), the knowledge embeddings of ERNIE-THU (SPECS §19).

A triple (h, r, t) should satisfy h + r ≈ t. Training minimises the margin ranking loss

    sum over (h, r, t) in a minibatch of  [margin + d(h + r, t) - d(h' + r, t')]_+

where (h', r, t') is the triple with its head *or* its tail (probability 1/2 each) replaced by a
uniformly drawn entity, and d is the L1 or L2 distance. As in the paper: entity and relation
vectors start uniform in ±6/sqrt(k); relation vectors are L2-normalised once at initialisation;
entity vectors are L2-normalised at the start of every minibatch step (so the loss cannot be
lowered by growing the norms); plain SGD on the summed loss. Only the rows a step reads are
normalised before it (a row's value matters only where it is read, so this is the paper's
update) and the gradients are sparse: a step costs O(batch), not O(entities). Everything is drawn
from one seeded ``torch.Generator``, so the same graph and settings give the same vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.core.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransESettings:
    """How TransE is trained.

    Attributes:
        dim: embedding width k (ERNIE-THU: 100).
        norm: the distance, 1 (L1, Bordes et al.'s best on FB15k) or 2 (L2).
        margin: the margin gamma of the ranking loss.
        epochs: passes over the triples.
        batch_size: triples per SGD step.
        lr: SGD learning rate (the paper searched {0.001, 0.01, 0.1}).
        seed: seeds initialisation, shuffling and corruption.
    """

    dim: int = 100
    norm: int = 1
    margin: float = 1.0
    epochs: int = 200
    batch_size: int = 512
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        prefix = "encoder.transe"
        for name in ("dim", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise config_error(f"{prefix}.{name}", value, "must be an integer >= 1", "e.g. 100")
        if self.norm not in (1, 2):
            raise config_error(f"{prefix}.norm", self.norm, "must be 1 (L1) or 2 (L2)", "use 1")
        for name in ("margin", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise config_error(f"{prefix}.{name}", value, "must be a number > 0", "e.g. 1.0")

    def key(self) -> str:
        """A file-name fragment naming these settings (the cache key of the vectors)."""
        return "-".join(
            f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in asdict(self).items()
        )


class TransE(nn.Module):
    """Entity and relation tables and the distance ``d(h + r, t)`` of triples."""

    def __init__(
        self,
        num_entities: int,
        num_relations: int,
        settings: TransESettings,
        generator: torch.Generator,
    ):
        super().__init__()
        self.norm = settings.norm
        bound = 6.0 / math.sqrt(settings.dim)
        entities = torch.rand(num_entities, settings.dim, generator=generator) * 2 - 1
        relations = torch.rand(num_relations, settings.dim, generator=generator) * 2 - 1
        # from_pretrained: no draw from the global RNG (a run's dropout must not depend on
        # whether the vectors were cached)
        self.entities = nn.Embedding.from_pretrained(entities * bound, freeze=False, sparse=True)
        relations = nn.functional.normalize(relations * bound, dim=-1)
        self.relations = nn.Embedding.from_pretrained(relations, freeze=False, sparse=True)

    def distance(self, triples: Tensor) -> Tensor:
        """``[n]`` distances d(h + r, t) of ``triples`` ``[n, 3]`` (head, relation, tail)."""
        gap = (
            self.entities(triples[:, 0])
            + self.relations(triples[:, 1])
            - self.entities(triples[:, 2])
        )
        return gap.abs().sum(-1) if self.norm == 1 else gap.square().sum(-1).sqrt()

    @torch.no_grad()
    def normalise_entities(self, rows: Tensor | None = None) -> None:
        """L2-normalise the entity vectors (only ``rows`` when given)."""
        table = self.entities.weight
        if rows is None:
            table.copy_(nn.functional.normalize(table, dim=-1))
        else:
            table[rows] = nn.functional.normalize(table[rows], dim=-1)


def corrupt(triples: Tensor, num_entities: int, generator: torch.Generator) -> Tensor:
    """Each triple with its head or its tail (probability 1/2) replaced by a uniform entity."""
    out = triples.clone()
    replacement = torch.randint(num_entities, (len(triples),), generator=generator)
    tail = torch.rand(len(triples), generator=generator) < 0.5
    out[:, 0] = torch.where(tail, out[:, 0], replacement)
    out[:, 2] = torch.where(tail, replacement, out[:, 2])
    return out


def train_transe(
    triples: np.ndarray, num_entities: int, num_relations: int, settings: TransESettings
) -> tuple[Tensor, Tensor, list[float]]:
    """Train TransE on ``triples`` ``[n, 3]``; return the entity vectors ``[num_entities, dim]``
    (L2-normalised, as after the last step), the relation vectors and the mean loss per triple
    of every epoch. Runs on one thread: its operations are too small to gain from more, and on
    a busy machine the intra-op thread pool's waits made a step ~60x slower (measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(triples, num_entities, num_relations, settings)
    finally:
        torch.set_num_threads(threads)


def _train(triples, num_entities: int, num_relations: int, settings: TransESettings):
    generator = torch.Generator().manual_seed(settings.seed)
    model = TransE(num_entities, num_relations, settings, generator)
    data = torch.as_tensor(np.asarray(triples, dtype=np.int64)).reshape(-1, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    losses: list[float] = []
    if len(data) and num_entities > 1:
        steps = math.ceil(len(data) / settings.batch_size)
        with progress("Training TransE entity embeddings", settings.epochs * steps) as advance:
            for _ in range(settings.epochs):
                order = torch.randperm(len(data), generator=generator)
                total = 0.0
                for batch in data[order].split(settings.batch_size):
                    negative = corrupt(batch, num_entities, generator)
                    model.normalise_entities(torch.cat([batch, negative])[:, (0, 2)].unique())
                    loss = torch.relu(
                        settings.margin + model.distance(batch) - model.distance(negative)
                    ).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    advance(1)
                losses.append(total / len(data))
        log.info(
            "TransE: %d triples, %d epochs, mean loss %.4f -> %.4f",
            len(data),
            settings.epochs,
            losses[0],
            losses[-1],
        )
    model.normalise_entities()
    return model.entities.weight.detach().clone(), model.relations.weight.detach().clone(), losses


def nearest(vectors: Tensor, index: int, k: int = 5) -> list[int]:
    """The ``k`` entities nearest to entity ``index`` (L2 distance), itself excluded."""
    distance = torch.cdist(vectors[index : index + 1], vectors)[0]
    distance[index] = math.inf
    return distance.topk(k, largest=False).indices.tolist()
