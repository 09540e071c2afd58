"""Score finished pre-training jobs on ONE masked-LM yardstick, whatever their input format.

``val/ref_mlm_acc`` is measured on each job's own validation instances: FULL-SENTENCES jobs on
packed sentences, SEGMENT-PAIR+NSP jobs on segment pairs whose second segment is a random one
half the time. To compare the two arms' masked-LM quality on the same inputs, this script builds
the validation split of REFERENCE_JOB's data format once (its config: tokenizer, instances,
sequence length), masks it once with ``validation_reference`` (15%, 80/10/10) under a fixed
seed, and scores every job's final weights (``clozelab.load``) on those very batches.

usage:
    python experiments/results/nsp_ablation/shared_reference.py REFERENCE_JOB JOB [JOB ...] \\
        [--out FILE.json] [--seed 0] [--set KEY=VALUE ...]

``--set`` changes a key of the reference masking, e.g. an all-[MASK] yardstick, neutral between
80/10/10 and mask-only models (an 80/10/10 reference leaves 10% of the targets visible, which
only the 80/10/10 model learned to copy):
    --set mask_prob=1.0 --set random_prob=0.0 --set keep_prob=0.0

Every job must have the reference job's tokenizer (same vocabulary file): a job trained with
another vocabulary is refused, not scored on mismatched ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

IGNORE = -100


def reference_masking(reference_job: Path, cfg, changes: dict | None = None):
    """The reference job's ``validation_reference`` (``cfg``: its config) with ``changes``
    (key -> value) applied; an unknown key is refused."""
    if cfg.get("validation_reference") is None:
        sys.exit(f"error: {reference_job}: validation_reference is null in its config.yaml, so it "
                 "defines no reference masking. Fix: pass a job trained with "
                 "validation_reference set (e.g. experiment=study_cpu).")  # fmt: skip
    reference = cfg.validation_reference.copy()
    for key, value in (changes or {}).items():
        if key not in reference:
            keys = sorted(k for k in reference if k != "_target_")
            sys.exit(f"error: --set {key}={value}: the reference masking has no key {key!r}. "
                     f"Fix: use one of {keys}.")  # fmt: skip
        reference[key] = value
    return reference


def reference_batches(
    reference_job: Path, cfg, seed: int, changes: dict | None = None
) -> list[dict]:
    """The reference job's validation split (``cfg``: its config), in its instance format,
    masked once by ``reference_masking``."""
    return masked_batches(cfg, seed, reference_masking(reference_job, cfg, changes))


def masked_batches(cfg, seed: int, reference) -> list[dict]:
    """The validation split of ``cfg``'s data, masked once by the masking config ``reference``."""
    from clozelab.data.datamodule import PretrainDataModule
    from clozelab.data.preprocess import prepare
    from clozelab.training.components import build_corruption

    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    masking = build_corruption(reference, "validation_reference", prepared.tokenizer, prepared)
    data = PretrainDataModule.from_config(cfg.data, prepared, masking, seed, num_workers=0)
    return list(data.val_dataloader())


def vocabulary(job: Path) -> str:
    return (job / "tokenizer" / "tokenizer.json").read_text()


@torch.no_grad()
def score(job: Path, batches: list[dict]) -> dict:
    """Masked-LM accuracy and loss (per masked token) of ``job``'s final weights."""
    import clozelab

    model = clozelab.load(job)
    correct = total = 0
    loss = 0.0
    for batch in batches:
        logits = model.mlm_logits(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
        labels = batch["mlm_labels"]
        picked = labels != IGNORE
        logits, labels = logits[picked], labels[picked]
        correct += int((logits.argmax(-1) == labels).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        total += int(labels.numel())
    return {"shared_ref_mlm_acc": correct / total, "shared_ref_mlm_loss": loss / total,
            "masked_tokens": total}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference_job", type=Path)
    parser.add_argument("jobs", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a key of the reference masking (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"error: --set {item}: expected KEY=VALUE, e.g. --set mask_prob=1.0")
        changes[key] = yaml.safe_load(value)
    cfg = OmegaConf.load(args.reference_job / "config.yaml")
    masking = reference_masking(args.reference_job, cfg, changes)
    batches = masked_batches(cfg, args.seed, masking)
    vocab = vocabulary(args.reference_job)
    reference = {
        "job": str(args.reference_job),
        "instances": cfg.data.instances,
        "max_seq_length": cfg.data.max_seq_length,
        "seed": args.seed,
        "masking": OmegaConf.to_container(masking),
        "sequences": sum(len(b["input_ids"]) for b in batches),
    }
    results = {"reference": reference, "jobs": {}}
    for job in args.jobs:
        if vocabulary(job) != vocab:
            sys.exit(f"error: {job}: its tokenizer differs from {args.reference_job}'s. Fix: "
                     "score only jobs trained with the reference job's vocabulary.")  # fmt: skip
        job_cfg = OmegaConf.load(job / "config.yaml")
        row = {"instances": job_cfg.data.instances, "seed": job_cfg.seed, **score(job, batches)}
        results["jobs"][str(job)] = row
        print(f"{job}: {row}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
