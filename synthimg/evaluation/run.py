"""Evaluation runs: zero-shot and linear-probe result lines for a model, a checkpoint or a training run.

``synthimg eval`` evaluates any open_clip model (tag, checkpoint or none: the zero-shot head
built from the task's templates) or a synthimg checkpoint (its fine-tuned head). During
training, :class:`RunEvaluator` is passed to the trainer and writes ``RUN/results.jsonl``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from synthimg.config import Config, EvalConfig
from synthimg.errors import SynthimgError
from synthimg.evaluation.linear_probe import (
    ProbeSettings,
    extract_features,
    feature_cache_key,
    probe_pair,
)
from synthimg.evaluation.results import ResultRecord, append_results
from synthimg.evaluation.zeroshot import evaluate_zeroshot
from synthimg.tasks.spec import TaskSpec

log = logging.getLogger("synthimg.eval")


def _split(task: TaskSpec, split: str, root: str | Path, transform: Any, memo_mb: int = 0) -> Any | None:
    """A split, or None (with a warning) when the data has no such split.

    With ``memo_mb`` > 0 it comes as a :class:`MemoSplit`, keyed by task, split, root, the
    name, size and modification time of each entry of the root and split folders, and the
    transform's repr; a transform whose repr does not pin it down (an object address, a random
    op) is never memoised.
    """
    from synthimg.data.splits import load_split
    from synthimg.evaluation.data import MemoSplit

    try:
        dataset = load_split(task, split, root, transform)
    except SynthimgError as err:
        if "no split" in str(err) or f"no {split}/" in str(err):
            log.warning("skipping split %s: %s", split, err)
            return None
        raise
    shown = repr(transform)
    if memo_mb <= 0 or transform is None or " at 0x" in shown or "Random" in shown:
        return dataset
    where = Path(root).resolve()
    stamps = tuple((d.name, e.name, st.st_size, st.st_mtime_ns)
                   for d in (where, where / split) if d.is_dir()
                   for e in sorted(os.scandir(d), key=lambda e: e.name) for st in (e.stat(),))
    return MemoSplit(dataset, (task.name, split, str(where), stamps, shown), memo_mb << 20)


def zeroshot_records(
    classifier: Any, transform: Any, task: TaskSpec, root: str | Path, cfg: EvalConfig, device: str,
    base: dict[str, Any], wise_alpha: float | None = None,
) -> list[ResultRecord]:
    """One ``zs`` line per evaluation split (val for model selection, test for reporting)."""
    records = []
    for split in cfg.splits:
        dataset = _split(task, split, root, transform, cfg.memo_mb)
        if dataset is None:
            continue
        metrics = evaluate_zeroshot(classifier, dataset, cfg.batch_size, cfg.workers, device, cfg.precision)
        records.append(ResultRecord(**base, task="zeroshot_classification", eval_mode="zs", split=split,
                                    metrics=metrics, wise_alpha=wise_alpha))
    return records


def linear_probe_records(
    encode: Any, transform: Any, task: TaskSpec, root: str | Path, cfg: EvalConfig, device: str,
    base: dict[str, Any], cache_dir: Path | None = None, cache_tag: str = "", wise_alpha: float | None = None,
) -> list[ResultRecord]:
    """The paper's two probes on features extracted once: train -> ``val`` line, train+val -> ``test`` line.

    When the data has no val split, 20% of the train features (seed 42) stand in for it and
    the test probe trains on the whole train split, so no choice is ever made on test.
    """
    import torch

    feats = {}
    for split in ("train", "val", "test"):
        if split != "train" and split not in cfg.splits:
            continue
        dataset = _split(task, split, root, transform, cfg.memo_mb)
        if dataset is None:
            continue
        cache = cache_dir / f"{feature_cache_key(cache_tag, task.name, split, root)}.pt" if cache_dir else None
        feats[split] = extract_features(encode, dataset, cfg.batch_size, cfg.workers, device, cache, cfg.precision)
    if "train" not in feats:
        raise SynthimgError(f"the linear probe needs the train split of {task.name} under {root}")
    held_out = "val" not in feats and "val" in cfg.splits
    if held_out:
        x, y = feats["train"]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))
        cut = len(x) // 5
        feats["val"], feats["train"] = (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])
    pair = probe_pair(feats, task.num_classes, ProbeSettings.from_config(cfg), base.get("seed", 0), device, held_out)
    return [
        ResultRecord(**base, task="linear_probe", eval_mode="lp", split=split, metrics=metrics, lp_trained_on=trained,
                     lp_epochs=cfg.lp_epochs, wise_alpha=wise_alpha)
        for split, metrics, trained in (("val", pair.val, pair.val_trained_on), ("test", pair.test, pair.test_trained_on))
        if split in cfg.splits and metrics is not None
    ]


class RunEvaluator:
    """Zero-shot lines and the two linear probes at every epoch of a training run (and for WiSE-FT mixes)."""

    def __init__(self, task: TaskSpec, root: str | Path, cfg: EvalConfig):
        self.task, self.root, self.cfg = task, root, cfg
        _split(task, cfg.splits[0], root, None)  # a missing or wrong root fails now, not after an epoch

    def _write(self, run_dir: Path, records: list[ResultRecord]) -> None:
        append_results(run_dir / "results.jsonl", records)  # one write: an epoch's lines land together or not at all
        for r in records:
            log.info("eval %s %s epoch %d%s: acc1 %.4f", r.eval_mode, r.split, r.epoch,
                     f" wise_alpha {r.wise_alpha}" if r.wise_alpha is not None else "", r.metrics.acc1)

    def has_epoch(self, run_dir: Path, epoch: int) -> bool:
        """True when ``results.jsonl`` already holds this epoch's lines (a resumed run skips them)."""
        from synthimg.evaluation.results import read_results

        path = run_dir / "results.jsonl"
        if not path.is_file():
            return False
        return any(r.epoch == epoch and r.wise_alpha is None for r in read_results(path))

    def on_epoch(self, learner: Any, base: dict[str, Any], run_dir: Path, device: str, wise_alpha: float | None = None) -> None:
        records: list[ResultRecord] = []
        if "zs" in self.cfg.modes:
            records += zeroshot_records(learner.classifier(), learner.transform_eval, self.task, self.root, self.cfg,
                                        device, base, wise_alpha=wise_alpha)
        if "lp" in self.cfg.modes:
            records += linear_probe_records(learner.encode_image, learner.transform_eval, self.task, self.root,
                                            self.cfg, device, base, wise_alpha=wise_alpha)
        self._write(run_dir, records)

def load_learner(checkpoint: str | Path, device: str) -> tuple[Any, dict[str, Any]]:
    """Rebuild a learner from a synthimg checkpoint (``weights_only``); returns it and the checkpoint."""
    import torch

    from synthimg.config import Config
    from synthimg.models.learners import build_learner
    from synthimg.tasks import get_task

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = Config.model_validate(ckpt["config"])
    learner = build_learner(cfg.train, get_task(ckpt["task"]), device, pretrained=None)
    learner.model.load_state_dict(ckpt["state_dict"])
    learner.model.eval()
    return learner, ckpt


def is_synthimg_checkpoint(path: str | Path) -> bool:
    import torch

    p = Path(path)
    if not p.is_file():
        return False
    try:
        return "synthimg" in torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an open_clip checkpoint with other contents
        return False


def evaluate(
    model: str, pretrained: str | None, task: TaskSpec, root: str | Path, cfg: EvalConfig, output: str | Path,
    arm: str = "zeroshot_baseline", seed: int = 0, cache_dir: Path | None = None,
) -> list[ResultRecord]:
    """Evaluate an open_clip model or a synthimg checkpoint; append the lines to ``output``."""
    from synthimg import dist
    from synthimg.config import config_hash
    from synthimg.models.clip import ClipClassifier, create_clip

    device = dist.device()
    if pretrained and is_synthimg_checkpoint(pretrained):
        learner, ckpt = load_learner(pretrained, device)
        tcfg = ckpt["config"]["train"]
        base = {"dataset": task.name, "model": tcfg["model"], "pretrained": str(pretrained),
                "arm": tcfg.get("arm") or arm, "arm_source": ckpt.get("arm_source"), "finetune": ckpt["learner"],
                "seed": tcfg["seed"],
                "epoch": ckpt["epoch"], "lr": tcfg["lr"], "config_hash": config_hash(ckpt["config"]),
                "run": ckpt["name"]}
        classifier, encode, transform = learner.classifier(), learner.encode_image, learner.transform_eval
    else:
        bundle = create_clip(model, pretrained, device=device)
        bundle.model.eval()
        from synthimg.models.clip import zeroshot_head

        head = zeroshot_head(bundle.model, bundle.tokenizer, [task.prompts(c) for c in range(task.num_classes)], device)
        classifier = ClipClassifier(bundle.model.visual, head).eval()
        encode, transform = classifier.features, bundle.preprocess_val
        base = {"dataset": task.name, "model": model, "pretrained": str(pretrained or "none"), "arm": arm,
                "finetune": "none", "seed": seed, "epoch": 0}
    records: list[ResultRecord] = []
    if "zs" in cfg.modes:
        records += zeroshot_records(classifier, transform, task, root, cfg, device, base)
    if "lp" in cfg.modes:
        tag = f"{base['model']}/{base['pretrained']}/{base['epoch']}"
        records += linear_probe_records(encode, transform, task, root, cfg, device, base, cache_dir, tag)
    append_results(output, records)
    return records


def run(cfg: Config, model: str | None, pretrained: str | None, root: str | Path, output: str | Path,
        arm: str = "zeroshot_baseline") -> list[ResultRecord]:
    """``eval``: zero-shot and the linear probes of a model (``pretrained`` None or "none": random
    weights; a synthimg checkpoint names its own model); lines appended to ``output``, probe
    features cached beside it (``features/``)."""
    from synthimg import dist
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task to evaluate on (--task)")
    if dist.rank_world()[0] != 0:  # one process evaluates; under torchrun the others would append the same lines
        return []
    weights = None if pretrained in (None, "none") else pretrained
    return evaluate(model or cfg.train.model, weights, get_task(cfg.task), root, cfg.eval, output, arm=arm,
                    cache_dir=Path(output).parent / "features")
