"""The training loop: DDP via torchrun/srun, the paper's AdamW + warmup/cosine, checkpoints, resume, WiSE-FT.

Run layout (open_clip's): ``LOGS/NAME/out.log``, ``config.yaml`` (resolved),
``checkpoints/epoch_K.pt``, ``checkpoints/epoch_latest.pt`` (written to a temp file, then
renamed), ``results.jsonl``, ``train_stats.json``. ``resume="latest"`` continues a killed
run from its last finished epoch to the same final weights (data order and RNG states are
functions of the seed and epoch, and are restored). Only rank 0 writes.

Batches are IID draws from the subset (:mod:`synthimg.train.data`); every epoch records the
distinct classes per batch against the IID expectation, and how many samples were seen
once, never or more than once, in ``train_stats.json`` and ``out.log``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthimg import dist
from synthimg.atomic import atomic_path
from synthimg.config import Config, config_hash, save_resolved, to_dict
from synthimg.dist import barrier
from synthimg.errors import SynthimgError
from synthimg.models.learners import Learner, build_learner, learner_name
from synthimg.models.unwrap import unwrap
from synthimg.pause import pause_point
from synthimg.plugins import Evaluator
from synthimg.stage import Stats

log = logging.getLogger("synthimg.train")


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    losses: list[float] = field(default_factory=list)
    epoch_stats: list[dict[str, Any]] = field(default_factory=list)
    steady_since: float | None = None  # wall time after this process's first step (start-up excluded)
    steady_steps: int = 0
    steady_until: float = 0.0



def _setup_logging(run_dir: Path, rank: int) -> None:
    """All ``synthimg.*`` loggers (training, evaluation, skipped samples) go to out.log and stderr."""
    root = logging.getLogger("synthimg")
    root.handlers.clear()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d %H:%M:%S")
    if rank == 0:
        handler = logging.FileHandler(run_dir / "out.log")
        handler.setFormatter(fmt)
        root.addHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)


def _optimizer(learner: Learner, cfg: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW by timm's factory (the paper: weight decay on every parameter), the paper's warmup + cosine.

    ``wd_exclude_norms`` is the common variant (no decay on biases and norm gains), not the paper's.
    """
    from timm.optim import create_optimizer_v2

    from synthimg.models.schedule import paper_scheduler

    trainable = unwrap(learner.model)
    on_gpu = next(trainable.parameters()).is_cuda
    fused = {"fused": True} if cfg.fused_adamw and on_gpu else {}
    opt = create_optimizer_v2(trainable, opt="adamw", lr=cfg.lr, weight_decay=cfg.wd, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps, filter_bias_and_bn=cfg.wd_exclude_norms, **fused)
    return opt, paper_scheduler(opt, cfg.warmup, max(1, total_steps))


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume_path(run_dir: Path, resume: str) -> Path:
    path = run_dir / "checkpoints" / "epoch_latest.pt" if resume == "latest" else Path(resume)
    if not path.is_file():
        raise SynthimgError(f"no checkpoint to resume from at {path}")
    return path


class Trainer:
    """One training run; :meth:`run` trains and returns the run directory.

    ``evaluator`` (optional) is called on rank 0 after every epoch (``on_epoch``) and for each
    WiSE-FT alpha. Training never imports the
    evaluation stage; the caller (the CLI, a study) passes it in.
    """

    def __init__(self, cfg: Config, evaluator: Evaluator | None = None):
        if cfg.task is None:
            raise SynthimgError("--task is required")
        from synthimg.tasks import get_task
        from synthimg.train.data import infer_arm, resolve_sources, sample_table

        self.cfg, self.tcfg = cfg, cfg.train
        self.task = get_task(cfg.task)
        self.sources = resolve_sources(self.tcfg)
        self.rank, self.world = dist.init()
        self.device = dist.device()
        name = self.tcfg.name or time.strftime("%Y_%m_%d-%H_%M_%S")
        self.run_dir = Path(self.tcfg.logs) / name
        ckpt_dir = self.run_dir / "checkpoints"
        if self.tcfg.resume is None and (ckpt_dir / "epoch_latest.pt").exists():
            raise SynthimgError(f"run {self.run_dir} already has checkpoints: pass --resume latest or another --name")
        if self.rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.run_dir)
        barrier()
        _setup_logging(self.run_dir, self.rank)
        self.arm_source = infer_arm(self.sources)
        self.arm = self.tcfg.arm or self.arm_source
        micro = self.world * self.tcfg.grad_accum
        if self.tcfg.batch_size % micro:
            raise SynthimgError(f"global batch {self.tcfg.batch_size} is not divisible by {self.world} ranks x "
                                f"{self.tcfg.grad_accum} accumulation steps")
        if self.rank == 0:  # rank 0 scans the tars and writes the index caches; the others then read them
            self.table = sample_table(self.sources)
        barrier()
        if self.rank != 0:
            self.table = sample_table(self.sources)
        self.num_samples = len(self.table)
        self.num_classes = max(self.task.num_classes, int(self.table.label.max()) + 1)
        self._shape: Any = None
        if self.table.dropped and any(self.table.dropped.values()):
            log.warning("unusable samples in the training shards (not trained on): %s", self.table.dropped)
        self.per_rank_batch = self.tcfg.batch_size // micro
        self.steps_per_epoch = self.tcfg.steps_per_epoch or max(1, math.ceil(self.num_samples / self.tcfg.batch_size))
        self.hash = config_hash(cfg)
        self.evaluator = evaluator
        self.trackers = _trackers(self.tcfg.report_to, self.run_dir, cfg) if self.rank == 0 else []

    # -- building -----------------------------------------------------------------------------
    def _build(self) -> tuple[Learner, dict[str, torch.Tensor]]:
        torch.manual_seed(self.tcfg.seed)
        random.seed(self.tcfg.seed)
        if self.device.startswith("cuda"):  # the paper trains in fp32; TF32 matmuls keep its numerics close
            torch.backends.cuda.matmul.allow_tf32 = self.tcfg.tf32
            torch.backends.cudnn.allow_tf32 = self.tcfg.tf32
        learner = build_learner(self.tcfg, self.task, self.device)
        initial = {k: v.detach().cpu().clone() for k, v in learner.model.state_dict().items()}
        return learner, initial

    def _wrap(self, learner: Learner) -> None:
        if self.world > 1:
            ids = [torch.cuda.current_device()] if self.device.startswith("cuda") else None
            learner.model = torch.nn.parallel.DistributedDataParallel(learner.model, device_ids=ids)
        if self.tcfg.compile:
            learner.model = torch.compile(learner.model)  # type: ignore[assignment]

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        learner, initial = self._build()
        total_steps = self.steps_per_epoch * self.tcfg.epochs
        state = RunState()
        opt, sched = _optimizer(learner, self.tcfg, total_steps)
        if self.tcfg.resume:
            state = self._load(_resume_path(self.run_dir, self.tcfg.resume), learner, opt, sched)
            log.info("resumed from epoch %d (step %d)", state.epoch, state.step)
            if state.epoch and self.evaluator is not None and not self.evaluator.has_epoch(self.run_dir, state.epoch):
                self._evaluate_epoch(learner, state)  # killed between the checkpoint and its evaluation
        self._wrap(learner)
        log.info("training %s (%s) on %d samples of %s: %d epochs x %d steps, global batch %d (%d ranks x %d x %d accum), "
                 "IID batches (one permutation of the subset per epoch)", self.tcfg.model, learner_name(self.tcfg),
                 self.num_samples, self.arm, self.tcfg.epochs, self.steps_per_epoch, self.tcfg.batch_size, self.world,
                 self.per_rank_batch, self.tcfg.grad_accum)
        params = [p for p in learner.model.parameters() if p.requires_grad]
        for epoch in range(state.epoch, self.tcfg.epochs):
            start = time.time()
            learner.model.train()
            epoch_losses = self._epoch(learner, opt, sched, params, state, epoch)
            state.epoch = epoch + 1
            state.elapsed += time.time() - start
            state.losses.append(sum(epoch_losses) / len(epoch_losses))
            state.epoch_stats[-1]["loss"] = state.losses[-1]
            self._checkpoint(learner, opt, sched, state)
            self._evaluate_epoch(learner, state)
        self._finish(learner, initial, state)
        return self.run_dir

    def _epoch(self, learner: Learner, opt: Any, sched: Any, params: list[torch.nn.Parameter], state: RunState,
               epoch: int) -> list[float]:
        """One epoch of IID batches; appends the epoch's batch diversity and coverage to ``state.epoch_stats``.

        Both are measured on what the training step received (all ranks together), not on the plan.
        """
        import numpy as np

        from synthimg.data.loader import SkipStats
        from synthimg.train.data import (
            epoch_loader,
            iid_expectation,
            is_union,
            plan_epoch,
        )

        plan = plan_epoch(self.table, self.tcfg, epoch, self.world, self.rank, self.tcfg.steps_per_epoch)
        skips = SkipStats()
        batches = epoch_loader(self.table, plan, learner.transform_train, self.tcfg.workers, skips,
                               pin_memory=self.device.startswith("cuda"))
        seen = np.zeros(len(self.table), dtype=np.int32)
        classes = np.zeros((plan.steps, self.num_classes), dtype=np.int32)  # classes each global batch delivered
        window_t, window_n, epoch_losses = time.time(), 0, []
        for step_in_epoch in range(plan.steps):
            loss_value = self._step(learner, opt, params, batches, seen, classes[step_in_epoch])
            sched.step()
            state.step += 1
            if state.steady_since is None:
                state.steady_since = time.time()
            else:
                state.steady_steps += 1
                state.steady_until = time.time()
            epoch_losses.append(loss_value)
            window_n += len(plan.global_batch(step_in_epoch))
            if state.step % self.tcfg.log_every == 0 or step_in_epoch == plan.steps - 1:
                rate = window_n / max(1e-9, time.time() - window_t)
                lr = opt.param_groups[0]["lr"]
                for track in self.trackers:
                    track({"train/loss": loss_value, "train/lr": lr, "train/samples_per_second": rate,
                           "train/samples_per_second_per_gpu": rate / self.world}, state.step)
                log.info("epoch %d step %d/%d loss %.4f lr %.3g samples_per_second %.1f samples_per_second_per_gpu %.1f",
                         epoch + 1, step_in_epoch + 1, plan.steps, loss_value, lr, rate, rate / self.world)
                window_t, window_n = time.time(), 0
        seen, classes = _sum_ranks(seen, self.world, self.device), _sum_ranks(classes, self.world, self.device)
        skipped = _sum_ranks(np.array(list(skips.as_dict().values())), self.world, self.device)
        skipped = dict(zip(skips.as_dict(), (int(v) for v in skipped)))
        coverage = {"samples": int(len(seen)), "seen_once": int((seen == 1).sum()), "unseen": int((seen == 0).sum()),
                    "seen_more": int((seen > 1).sum())}
        diversity = {"batch_classes_mean": float((classes > 0).sum(axis=1).mean()),
                     "batch_classes_iid": iid_expectation(self.table, [len(plan.global_batch(s)) for s in range(plan.steps)]),
                     "batches": plan.steps, "classes": int((self.table.class_counts() > 0).sum())}
        state.epoch_stats.append({"epoch": epoch + 1, **diversity, **coverage, "skipped": skipped})
        log.info("epoch %d: batch_classes_mean %.2f batch_classes_iid %.2f (distinct classes per batch of %d, "
                 "IID expectation); %d of %d samples seen once, %d never, %d more than once", epoch + 1,
                 diversity["batch_classes_mean"], diversity["batch_classes_iid"], self.tcfg.batch_size,
                 coverage["seen_once"], coverage["samples"], coverage["unseen"], coverage["seen_more"])
        exactly_once = self.tcfg.steps_per_epoch is None and is_union(self.table)  # else by design not every sample
        if exactly_once and coverage["unseen"] > sum(skipped.values()):
            raise SynthimgError(f"epoch {epoch + 1} lost {coverage['unseen'] - sum(skipped.values())} samples that were "
                                "neither trained on nor counted as skipped; see out.log")
        return epoch_losses

    def _step(self, learner: Learner, opt: Any, params: list[torch.nn.Parameter], batches: Any, seen: Any,
              classes: Any) -> float:
        """One optimiser step over ``grad_accum`` micro-batches; returns the global mean loss.

        The loss is summed over the samples the whole global batch received (counted across
        ranks first), so DDP's mean over ranks gives the plain mean whatever the padding or
        the skipped samples.
        """
        from synthimg.runtime import autocast

        micro_batches = [self._present(next(batches)) for _ in range(self.tcfg.grad_accum)]
        received = 0
        for batch in micro_batches:
            real = batch["weight"] > 0
            received += int(real.sum())
            if real.any():
                _mark_seen(seen, batch["index"][real])
                classes[np.unique(batch["label"][real].numpy())] = 1
        n_global = _sum_ranks(np.array([received]), self.world, self.device)[0] if self.world > 1 else received
        n_global = max(1, int(n_global))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        weighted = hasattr(learner, "sample_losses")
        for micro, batch in enumerate(micro_batches):
            if not weighted and self.world == 1:  # a mean-only loss (FLYP): drop the padding when shapes may differ
                batch = _real_only(batch)
            sync = micro == self.tcfg.grad_accum - 1 or not hasattr(learner.model, "no_sync")
            ctx = learner.model.no_sync() if not sync else _null()
            with ctx:
                with autocast(self.device) if self.tcfg.precision.startswith("amp") else _null():
                    if weighted:
                        losses = learner.sample_losses(batch) * batch["weight"].to(self.device)
                        loss = losses.sum() * (self.world / n_global)
                        total += float(losses.detach().sum()) / n_global
                    else:
                        loss = learner.loss(batch) / self.tcfg.grad_accum
                        total += float(loss.detach()) / self.world
                loss.backward()
        if self.tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.tcfg.grad_clip)
        opt.step()
        if self.world > 1:  # log the global mean loss, not rank 0's share
            value = torch.tensor([total], device=self.device)
            torch.distributed.all_reduce(value)
            total = value.item()
        return total

    def _present(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A micro-batch whose every sample failed to decode becomes one weight-0 stand-in (DDP needs a backward)."""
        if batch["image"] is not None:
            self._shape = batch["image"].shape[1:]
            return batch
        if self._shape is None:
            raise SynthimgError("the first training batch held no readable image: see the skipped samples in out.log")
        return {"image": torch.zeros((1, *self._shape)), "label": torch.zeros(1, dtype=torch.long),
                "index": torch.zeros(1, dtype=torch.long), "weight": torch.zeros(1)}

    # -- checkpoints --------------------------------------------------------------------------
    def _checkpoint(self, learner: Learner, opt: Any, sched: Any, state: RunState) -> None:
        if self.rank == 0:
            ckpt = {
                "synthimg": 1,
                "epoch": state.epoch,
                "step": state.step,
                "elapsed": state.elapsed,
                "losses": state.losses,
                "epoch_stats": json.dumps(state.epoch_stats),
                "name": self.run_dir.name,
                "learner": learner_name(self.tcfg),
                "arm_source": self.arm_source,
                "task": self.task.name,
                "config": to_dict(self.cfg),
                "state_dict": unwrap(learner.model).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_python": random.getstate(),
                "rng_learner": learner.generator.get_state() if hasattr(learner, "generator") else None,
            }
            folder = self.run_dir / "checkpoints"
            _save(folder / f"epoch_{state.epoch}.pt", ckpt)
            _save(folder / "epoch_latest.pt", ckpt)
            pause_point(f"checkpoint:{state.epoch}")
        barrier()

    def _load(self, path: Path, learner: Learner, opt: Any, sched: Any) -> RunState:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        learner.model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_torch"])
        random.setstate(_as_tuple(ckpt["rng_python"]))
        if ckpt.get("rng_learner") is not None and hasattr(learner, "generator"):
            learner.generator.set_state(ckpt["rng_learner"])
        return RunState(epoch=ckpt["epoch"], step=ckpt["step"], elapsed=ckpt["elapsed"], losses=list(ckpt["losses"]),
                        epoch_stats=json.loads(ckpt.get("epoch_stats", "[]")))

    # -- evaluation ---------------------------------------------------------------------------
    def _record(self, epoch: int, gpu_hours: float) -> dict[str, Any]:
        return {
            "dataset": self.task.name, "model": self.tcfg.model, "pretrained": str(self.tcfg.pretrained or "none"),
            "arm": self.arm, "arm_source": self.arm_source, "num_train_images": self.num_samples,
            "finetune": learner_name(self.tcfg),
            "seed": self.tcfg.seed, "epoch": epoch, "lr": self.tcfg.lr, "gpu_hours": gpu_hours,
            "config_hash": self.hash, "run": self.run_dir.name,
        }

    def _evaluate_epoch(self, learner: Learner, state: RunState, wise_alpha: float | None = None) -> None:
        if self.evaluator is not None and self.rank == 0:
            base = self._record(state.epoch, state.elapsed * self.world / 3600.0)
            self.evaluator.on_epoch(learner, base, self.run_dir, self.device, wise_alpha=wise_alpha)
        barrier()

    def _finish(self, learner: Learner, initial: dict[str, torch.Tensor], state: RunState) -> None:
        if self.tcfg.wise_alphas:
            model = unwrap(learner.model)
            final = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for alpha in self.tcfg.wise_alphas:
                mixed = {k: (1 - alpha) * initial[k].to(v.device, v.dtype) + alpha * v if v.is_floating_point() else v
                         for k, v in final.items()}
                model.load_state_dict(mixed)
                self._evaluate_epoch(learner, state, wise_alpha=alpha)
            model.load_state_dict(final)
        if self.rank == 0:
            stats = {"epochs": state.epoch, "steps": state.step, "duration": round(state.elapsed, 3),
                     "samples_per_second": round(state.step * self.tcfg.batch_size / max(1e-9, state.elapsed), 2),
                     "steady_samples_per_second": round(state.steady_steps * self.tcfg.batch_size / max(
                         1e-9, state.steady_until - state.steady_since), 2) if state.steady_since and state.steady_steps else None,
                     "world_size": self.world, "epoch_losses": state.losses, "num_train_images": self.num_samples,
                     "per_epoch": state.epoch_stats, "loader": {"order": "IID: one permutation of the subset per epoch",
                                                                "index_bytes": self.table.nbytes,
                                                                "unusable_samples": self.table.dropped},
                     "gpu_hours": state.elapsed * self.world / 3600.0, "device": self.device}
            (self.run_dir / "train_stats.json").write_text(json.dumps(stats, indent=1))
        barrier()


def _trackers(names: list[str], run_dir: Path, cfg: Config) -> list[Any]:
    """Optional TensorBoard / wandb loggers: callables ``(metrics, step)``."""
    trackers = []
    if "tensorboard" in names:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SynthimgError("train.report_to tensorboard needs the tensorboard package: pip install tensorboard") from None
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        trackers.append(lambda metrics, step: [writer.add_scalar(k, v, step) for k, v in metrics.items()])
    if "wandb" in names:
        try:
            import wandb
        except ImportError:
            raise SynthimgError("train.report_to wandb needs the wandb package: pip install wandb") from None
        wandb.init(project="synthimg", name=run_dir.name, dir=str(run_dir), config=to_dict(cfg))
        trackers.append(lambda metrics, step: wandb.log(metrics, step=step))
    return trackers


def _mark_seen(seen: Any, indices: torch.Tensor) -> None:
    np.add.at(seen, indices.numpy(), 1)


def _sum_ranks(values: Any, world: int, device: str) -> Any:
    """The element-wise sum of a numpy array over all ranks (itself when not distributed)."""
    if world == 1:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def _real_only(batch: dict[str, Any]) -> dict[str, Any]:
    keep = batch["weight"] > 0
    if bool(keep.all()):
        return batch
    return {k: (v[keep] if isinstance(v, torch.Tensor) else [x for x, m in zip(v, keep.tolist()) if m])
            for k, v in batch.items()}


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def train(cfg: Config, evaluator: Evaluator | None = None) -> Path:
    """Train as configured; returns the run directory."""
    return Trainer(cfg, evaluator).run()


def run(cfg: Config, evaluator: Evaluator | None = None) -> Stats:
    """``train``: the run folder (checkpoints, out.log, train_stats.json, config.yaml; the
    evaluator's results.jsonl); returns ``train_stats.json`` with ``run_dir`` and this rank."""
    run_dir = train(cfg, evaluator)
    rank = dist.rank_world()[0]
    path = run_dir / "train_stats.json"
    stats = json.loads(path.read_text()) if rank == 0 and path.is_file() else {}
    return {**stats, "run_dir": str(run_dir), "rank": rank}
