"""The training loop: DDP via torchrun/srun, AdamW + warmup/cosine, bf16, checkpoints, resume, WiSE-FT.

Run layout (open_clip's): ``LOGS/NAME/out.log``, ``config.yaml`` (resolved),
``checkpoints/epoch_K.pt``, ``checkpoints/epoch_latest.pt`` (written to a temp file, then
renamed), ``results.jsonl``. ``resume="latest"`` continues a killed run from its last
finished epoch to the same final weights (data order and RNG states are functions of the
seed and epoch, and are restored). Only rank 0 writes.
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

import torch

from synthimg.config import Config, config_hash, save_resolved, to_dict
from synthimg.errors import SynthimgError
from synthimg.runtime import barrier
from synthimg.train.distributed import setup
from synthimg.train.learners import Learner, build_learner, learner_name

log = logging.getLogger("synthimg.train")


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    losses: list[float] = field(default_factory=list)
    steady_since: float | None = None  # wall time after this process's first step (start-up excluded)
    steady_steps: int = 0
    steady_until: float = 0.0


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


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
    """timm's factories: AdamW without weight decay on gains and biases, warmup then cosine per step."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    trainable = _unwrap(learner.model)
    opt = create_optimizer_v2(trainable, opt="adamw", lr=cfg.lr, weight_decay=cfg.wd, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps)
    sched = CosineLRScheduler(opt, t_initial=max(1, total_steps), warmup_t=cfg.warmup, warmup_lr_init=0.0,
                              lr_min=0.0, t_in_epochs=False)
    return opt, sched


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume_path(run_dir: Path, resume: str) -> Path:
    path = run_dir / "checkpoints" / "epoch_latest.pt" if resume == "latest" else Path(resume)
    if not path.is_file():
        raise SynthimgError(f"no checkpoint to resume from at {path}")
    return path


class Trainer:
    """One training run; :meth:`run` trains and returns the run directory.

    ``evaluator`` (optional) is called on rank 0 after every epoch (``on_epoch``), for each
    WiSE-FT alpha, and once at the end (``on_finish``). Training never imports the
    evaluation stage; the caller (the CLI, a study) passes it in.
    """

    def __init__(self, cfg: Config, evaluator: Any = None):
        if cfg.task is None:
            raise SynthimgError("--task is required")
        from synthimg.tasks import get_task
        from synthimg.train.data import infer_arm, resolve_sources

        self.cfg, self.tcfg = cfg, cfg.train
        self.task = get_task(cfg.task)
        self.sources = resolve_sources(self.tcfg)
        self.rank, self.world, self.device = setup()
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
        self.arm = self.tcfg.arm or infer_arm(self.sources)
        self.num_samples = sum(s.size for s in self.sources)
        micro = self.world * self.tcfg.grad_accum
        if self.tcfg.batch_size % micro:
            raise SynthimgError(f"global batch {self.tcfg.batch_size} is not divisible by {self.world} ranks x "
                                f"{self.tcfg.grad_accum} accumulation steps")
        self.per_rank_batch = self.tcfg.batch_size // micro
        self.steps_per_epoch = self.tcfg.steps_per_epoch or max(1, math.ceil(self.num_samples / self.tcfg.batch_size))
        self.hash = config_hash(cfg)
        self.evaluator = evaluator
        self.trackers = _trackers(self.tcfg.report_to, self.run_dir, cfg) if self.rank == 0 else []

    # -- building -----------------------------------------------------------------------------
    def _build(self) -> tuple[Learner, dict[str, torch.Tensor]]:
        torch.manual_seed(self.tcfg.seed)
        random.seed(self.tcfg.seed)
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
        from synthimg.train.data import epoch_batches

        learner, initial = self._build()
        total_steps = self.steps_per_epoch * self.tcfg.epochs
        state = RunState()
        opt, sched = _optimizer(learner, self.tcfg, total_steps)
        if self.tcfg.resume:
            state = self._load(_resume_path(self.run_dir, self.tcfg.resume), learner, opt, sched)
            log.info("resumed from epoch %d (step %d)", state.epoch, state.step)
        self._wrap(learner)
        log.info("training %s (%s) on %d samples of %s: %d epochs x %d steps, global batch %d (%d ranks x %d x %d accum)",
                 self.tcfg.model, learner_name(self.tcfg), self.num_samples, self.arm, self.tcfg.epochs,
                 self.steps_per_epoch, self.tcfg.batch_size, self.world, self.per_rank_batch, self.tcfg.grad_accum)
        params = [p for p in learner.model.parameters() if p.requires_grad]
        for epoch in range(state.epoch, self.tcfg.epochs):
            start = time.time()
            learner.model.train()
            batches = epoch_batches(self.sources, self.tcfg, learner.transform_train, epoch, self.per_rank_batch,
                                    self.steps_per_epoch)
            window_t, window_n, epoch_losses = time.time(), 0, []
            for step_in_epoch in range(self.steps_per_epoch):
                loss_value = self._step(learner, opt, params, batches)
                state.step += 1
                if state.steady_since is None:
                    state.steady_since = time.time()
                else:
                    state.steady_steps += 1
                    state.steady_until = time.time()
                sched.step_update(state.step)
                epoch_losses.append(loss_value)
                window_n += self.tcfg.batch_size
                if state.step % self.tcfg.log_every == 0 or step_in_epoch == self.steps_per_epoch - 1:
                    rate = window_n / max(1e-9, time.time() - window_t)
                    for track in self.trackers:
                        track({"train/loss": loss_value, "train/lr": opt.param_groups[0]["lr"],
                               "train/samples_per_second": rate, "train/samples_per_second_per_gpu": rate / self.world},
                              state.step)
                    log.info("epoch %d step %d/%d loss %.4f lr %.3g samples_per_second %.1f samples_per_second_per_gpu %.1f",
                             epoch + 1, step_in_epoch + 1, self.steps_per_epoch, loss_value, opt.param_groups[0]["lr"],
                             rate, rate / self.world)
                    window_t, window_n = time.time(), 0
            state.epoch = epoch + 1
            state.elapsed += time.time() - start
            state.losses.append(sum(epoch_losses) / len(epoch_losses))
            self._checkpoint(learner, opt, sched, state)
            self._evaluate_epoch(learner, state)
        self._finish(learner, initial, state)
        return self.run_dir

    def _step(self, learner: Learner, opt: Any, params: list[torch.nn.Parameter], batches: Any) -> float:
        from synthimg.runtime import autocast

        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(self.tcfg.grad_accum):
            batch = next(batches)
            sync = micro == self.tcfg.grad_accum - 1 or not hasattr(learner.model, "no_sync")
            ctx = learner.model.no_sync() if not sync else _null()
            with ctx:
                with autocast(self.device) if self.tcfg.precision.startswith("amp") else _null():
                    loss = learner.loss(batch) / self.tcfg.grad_accum
                loss.backward()
            total += loss.item()
        if self.tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.tcfg.grad_clip)
        opt.step()
        if self.world > 1:  # log the global mean loss, not rank 0's share
            value = torch.tensor([total], device=self.device)
            torch.distributed.all_reduce(value)
            total = value.item() / self.world
        return total

    # -- checkpoints --------------------------------------------------------------------------
    def _checkpoint(self, learner: Learner, opt: Any, sched: Any, state: RunState) -> None:
        if self.rank == 0:
            ckpt = {
                "synthimg": 1,
                "epoch": state.epoch,
                "step": state.step,
                "elapsed": state.elapsed,
                "losses": state.losses,
                "name": self.run_dir.name,
                "learner": learner_name(self.tcfg),
                "task": self.task.name,
                "config": to_dict(self.cfg),
                "state_dict": _unwrap(learner.model).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_python": random.getstate(),
                "rng_learner": learner.generator.get_state() if hasattr(learner, "generator") else None,
            }
            folder = self.run_dir / "checkpoints"
            _save(folder / f"epoch_{state.epoch}.pt", ckpt)
            _save(folder / "epoch_latest.pt", ckpt)
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
        return RunState(epoch=ckpt["epoch"], step=ckpt["step"], elapsed=ckpt["elapsed"], losses=list(ckpt["losses"]))

    # -- evaluation ---------------------------------------------------------------------------
    def _record(self, epoch: int, gpu_hours: float) -> dict[str, Any]:
        return {
            "dataset": self.task.name, "model": self.tcfg.model, "pretrained": str(self.tcfg.pretrained or "none"),
            "arm": self.arm, "num_train_images": self.num_samples, "finetune": learner_name(self.tcfg),
            "seed": self.tcfg.seed, "epoch": epoch, "lr": self.tcfg.lr, "gpu_hours": gpu_hours,
            "config_hash": self.hash, "run": self.run_dir.name,
        }

    def _evaluate_epoch(self, learner: Learner, state: RunState, wise_alpha: float | None = None) -> None:
        if self.evaluator is not None and self.rank == 0:
            base = self._record(state.epoch, state.elapsed * self.world / 3600.0)
            self.evaluator.on_epoch(learner, base, self.run_dir, self.device, wise_alpha=wise_alpha)
        barrier()

    def _finish(self, learner: Learner, initial: dict[str, torch.Tensor], state: RunState) -> None:
        if self.evaluator is not None and self.rank == 0:
            self.evaluator.on_finish(learner, self._record(state.epoch, state.elapsed * self.world / 3600.0),
                                     self.run_dir, self.device)
        if self.tcfg.wise_alphas:
            model = _unwrap(learner.model)
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


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def train(cfg: Config, evaluator: Any = None) -> Path:
    """Train as configured; returns the run directory."""
    return Trainer(cfg, evaluator).run()
