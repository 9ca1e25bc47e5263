"""The study's plan: every step (a ``synthimg`` command line) with its outputs, inputs and hash.

Shared steps build each arm's pool (captions -> generate, or index -> retrieve -> download),
curate it (score -> filter -> decontaminate -> subsample) and analyse it; one step per cell
(arm x scale x seed x lr) trains and evaluates. A step's hash covers only the config sections
it reads and the hashes of the steps it reads from, so changing the learning rate reruns cells,
never generation. Steps live in folders named after their hash: a changed recipe never
overwrites earlier outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synthimg.atomic import atomic_write
from synthimg.config import Config, config_hash, to_dict
from synthimg.study.pools import (
    PoolCheck,
    PoolSize,
    background_work,
    caption_work,
    coverage_rows,
    decontam_keep,
    expected_after_curation,
    shards_pool,
    size_pool,
)
from synthimg.study.spec import ALL, Scale, StudyConfig

# The config keys each kind of step reads; its hash covers exactly these.
SECTIONS: dict[str, list[str]] = {
    "backgrounds": ["task", "captions.method", "captions.llm", "captions.llm_url", "captions.llm_backend",
                    "captions.temperature", "captions.top_p", "captions.max_new_tokens", "captions.seed",
                    "captions.batch_size", "captions.max_rounds", "captions.dtype", "captions.backgrounds_scope",
                    "captions.backgrounds_count"],
    "captions": ["task", "captions"],
    "generate": ["generate"],
    "index": ["index"],
    "retrieve": ["task", "retrieve"],
    "download": ["download"],
    "score": ["task", "curate.model", "curate.pretrained", "curate.reduce"],
    "filter": ["curate.top", "curate.cap"],
    "decontaminate": ["curate.descriptor", "curate.threshold", "curate.phash", "curate.phash_threshold",
                      "curate.phash_bits", "curate.phash_crops", "curate.phash_index",
                      "curate.isc_weights", "curate.isc_backbone", "curate.isc_image_size", "curate.against_splits"],
    "subsample": ["curate.stratified"],
    "analyze": ["curate.model", "curate.pretrained"],
    "baseline": ["task", "train.model", "train.pretrained", "train.learner", "eval"],
    "train": ["task", "train", "eval"],
}
# Paths and bookkeeping that do not change what a step computes.
UNHASHED = {"train.logs", "train.name", "train.resume", "train.data", "train.keys", "train.workers", "eval.workers",
            "curate.workers", "index.workers", "download.processes", "download.threads", "download.keep_rounds",
            "train.report_to",
            # speed levers that leave the output as it was (the pixel guard of the generate bench checks it)
            "generate.channels_last", "generate.fuse_qkv", "generate.attention", "generate.compile_mode",
            "train.fused_adamw", "index.chunk_rows", "eval.memo_mb",
            # read only by `index build --embeddings`, whose step carries it in its extra
            "index.train_samples"}


@dataclass
class Step:
    """One command of the study. ``argv`` runs under ``synthimg``; ``outputs`` mark it done."""

    id: str
    kind: str
    argv: list[str]
    outputs: list[Path]
    deps: list[str] = field(default_factory=list)
    arm: str | None = None
    hash: str = ""
    config: Path | None = None
    distributed: bool = False  # may run under torchrun over several GPUs
    gpu: bool = True
    run_dir: Path | None = None  # train steps: the run folder (resumed or restarted)
    cell: dict[str, Any] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)  # images/samples for the cost estimate
    cfg: Config | None = field(default=None, repr=False)  # the resolved stage sections it runs with
    check: Any = field(default=None, repr=False)  # called with the step after it ran; raises when its output falls short


def _pick(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _strip(data: Any, prefix: str) -> Any:
    if isinstance(data, dict):
        return {k: _strip(v, f"{prefix}.{k}") for k, v in data.items() if f"{prefix}.{k}" not in UNHASHED}
    return data


# A substring scan takes every caption match: its quotas and kNN settings change nothing it finds.
SUBSTRING_RETRIEVE = ["task", "retrieve.backend", "retrieve.metadata"]


def step_hash(kind: str, cfg: Config, upstream: list[str], extra: dict[str, Any] | None = None) -> str:
    """The hash of the sections ``kind`` reads, its inputs' hashes and ``extra`` (scale, seed, ...)."""
    data = to_dict(cfg)
    sections = SUBSTRING_RETRIEVE if kind == "retrieve" and cfg.retrieve.backend == "substring" else SECTIONS[kind]
    picked = {key: _strip(_pick(data, key), key) for key in sections}
    return config_hash({"kind": kind, "sections": picked, "upstream": upstream, "extra": extra or {}}, 10)


def _fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


class Planner:
    """Builds the ordered list of steps for a study rooted at ``root``."""

    def __init__(self, study: StudyConfig, root: Path):
        self.study, self.root = study, Path(root)
        self.steps: list[Step] = []
        self.index: dict[str, Step] = {}

    def _add(self, kind: str, cfg: Config, arm: str | None, folder: str, argv: list[str], outputs: list[str],
             deps: list[Step], extra: dict[str, Any] | None = None, **kw: Any) -> Step:
        h = step_hash(kind, cfg, [d.hash for d in deps], extra)
        where = self.root / (f"arms/{arm}" if arm else "") / f"{folder}-{h}"
        sid = f"{arm + '.' if arm else ''}{folder}-{h}"
        if sid in self.index:
            return self.index[sid]
        config_path = self.root / "configs" / f"{sid}.yaml"
        argv = [a.replace("{out}", str(where)) for a in argv] + ["--config", str(config_path)]
        step = Step(id=sid, kind=kind, argv=argv, outputs=[where / o for o in outputs], deps=[d.id for d in deps],
                    arm=arm, hash=h, config=config_path, cfg=cfg, **kw)
        self.steps.append(step)
        self.index[sid] = step
        return step

    def out(self, step: Step) -> Path:
        return step.outputs[0].parent

    def plan(self) -> list[Step]:
        s = self.study
        scales = self._subset_scales()
        order = sorted(scales, key=lambda n: s.arms[n].source == "sdedit")  # an SDEdit arm sizes from its init arm
        self.sizes: dict[str, PoolSize] = {}
        for name in order:
            self.sizes[name] = self._size(name, scales[name])
        self.coverage = coverage_rows(s, self.sizes)
        pools: dict[str, tuple[Step, Step]] = {}  # arm -> (images step, keys step)
        subsets: dict[str, Step] = {}
        plain = [n for n, a in s.arms.items() if a.source not in ("mixed", "sdedit")]
        for name in plain:
            pools[name] = self._pool(name)
        everything = [name for name in plain if ALL in scales[name]]
        for name in plain:
            subsets[name] = self._subsample(name, *pools[name], scales[name],
                                            [pools[o][1] for o in everything if o != name])
        for name, arm in s.arms.items():  # SDEdit arms render another arm's curated pool, pair with its subsets
            if arm.source == "sdedit":
                pools[name] = self._sdedit_pool(name, *pools[arm.init_from])  # type: ignore[index]
                subsets[name] = self._subsample(name, *pools[name], scales[name], [],
                                                paired=subsets[arm.init_from])  # type: ignore[index]
        if s.baseline:
            self._baseline()
        for name, arm in s.arms.items():
            for scale in s.arm_scales(name):
                for seed in s.seeds:
                    for lr in s.lrs:
                        self._cell(name, scale, seed, lr, pools, subsets)
        if s.analysis:
            for name, arm in s.arms.items():
                if arm.source != "mixed":
                    self._analyze(name, *pools[name], subsets[name])
        return self.steps

    def _subset_scales(self) -> dict[str, set[Scale]]:
        """Subset sizes each pool must provide: its own scales plus its share of mixed arms."""
        s = self.study
        need: dict[str, set[Scale]] = {n: set(s.arm_scales(n)) for n, a in s.arms.items() if a.source != "mixed"}
        for name, arm in s.arms.items():
            for part, frac in arm.mix.items():
                need[part] |= {round(scale * frac) for scale in s.arm_scales(name)}  # type: ignore[operator]
        return need

    def _size(self, name: str, scales: set[Scale]) -> PoolSize:
        """The pool an arm asks for, sized from its largest numeric scale through the expected losses."""
        s, arm = self.study, self.study.arms[name]
        cfg = s.stage_config(name)
        classes = _num_classes(s.task)
        needed = max((n for n in scales if n != ALL), default=0)  # type: ignore[type-var]
        if arm.source == "shards":
            return shards_pool(name, arm, cfg, classes, needed, s.losses)
        if arm.source == "sdedit":  # one image per image of the init arm's curated pool
            per_class = self.sizes[arm.init_from].expected_post // classes  # type: ignore[index]
            return PoolSize(name, per_class, None, expected_after_curation(per_class, classes, arm, cfg, s.losses),
                            needed, False)
        return size_pool(name, arm, cfg, classes, needed, s.losses)

    def _sdedit_pool(self, name: str, init_images: Step, init_keys: Step) -> tuple[Step, Step]:
        """SDEdit: noise and denoise every image of another arm's curated pool at ``generate.strength``."""
        s = self.study
        cfg = s.stage_config(name)
        argv = ["generate", "--task", s.task, "--init-shards", str(init_images.outputs[0].parent), "--out", "{out}"]
        if init_keys.kind != "score":
            argv += ["--init-keys", str(init_keys.outputs[0])]
        images = self._add("generate", cfg, name, "images", argv, ["generate_stats.json"], [init_keys],
                           distributed=True, extra={"init": init_keys.hash},
                           work={"generate": self.sizes[name].made_per_class * _num_classes(s.task)})
        return images, self._curate(name, cfg, images)

    def _pool(self, name: str) -> tuple[Step, Step]:
        """The arm's images and its curated key list."""
        s, arm = self.study, self.study.arms[name]
        cfg = s.stage_config(name)
        n_classes = _num_classes(s.task)
        size = self.sizes[name]
        synthetic = arm.source == "synthetic"
        check = PoolCheck(name, size.needed, n_classes, cfg.curate.top if arm.filters else None,
                          cfg.curate.cap if arm.filters else None, decontam_keep(arm, s.losses),
                          cfg.generate.images_per_caption if synthetic else 1,
                          s.losses.generate_drop if synthetic else 0.0, cfg.retrieve.backend)
        if arm.source == "synthetic":
            per_caption = cfg.generate.images_per_caption
            cfg.captions.per_class = -(-size.made_per_class // per_caption)
            deps: list[Step] = []
            llm = cfg.captions.method == "llm"
            # captions and backgrounds depend on the task and the caption settings only: arms that agree share them
            if llm and cfg.captions.backgrounds is None:  # the paper's LLM-written places, before captioning
                bg = self._add("backgrounds", cfg, None, "backgrounds",
                               ["captions", "backgrounds", "--task", s.task, "--out", "{out}/backgrounds.json"],
                               ["backgrounds.json"], [], gpu=cfg.captions.llm_url is None,
                               work=background_work(cfg, s.task))
                cfg.captions.backgrounds = str(bg.outputs[0])
                deps = [bg]
            caps = self._add("captions", cfg, None, "captions", ["captions", "--out", "{out}"], ["captions.parquet"],
                             deps, gpu=llm and cfg.captions.llm_url is None, check=check,
                             work=caption_work(cfg, s.task, cfg.captions.per_class * n_classes) if llm else {})
            images = self._add("generate", cfg, name, "images",
                               ["generate", "--captions", str(caps.outputs[0]), "--out", "{out}"],
                               ["generate_stats.json"], [caps], distributed=True,
                               work={"generate": cfg.captions.per_class * per_caption * n_classes})
        elif arm.source == "retrieved":
            if "per_class" not in cfg.retrieve.model_fields_set:  # URLs to find: the quota over the link success
                cfg.retrieve.per_class = size.candidates_per_class  # type: ignore[assignment]
            cfg.download.per_class = size.made_per_class
            cfg.download.total = size.made_per_class * n_classes  # short classes are made up by the others
            deps = []
            if arm.index is not None:
                argv = ["index", "build", "--out", "{out}"]
                if arm.index.shards:
                    argv += ["--shards", arm.index.shards]
                if arm.index.captions:
                    argv += ["--captions", arm.index.captions]
                extra: dict[str, Any] = {"shards": arm.index.shards, "captions": arm.index.captions}
                if arm.index.embeddings:  # a CPU faiss build from released embeddings: no GPU, no ranks
                    argv += ["--embeddings", arm.index.embeddings]
                    extra.update(embeddings=arm.index.embeddings, train_samples=cfg.index.train_samples)
                idx = self._add("index", cfg, None, "index", argv, ["info.json"], [],
                                distributed=not arm.index.embeddings, gpu=not arm.index.embeddings, extra=extra)
                cfg.retrieve.index = str(self.out(idx))
                deps = [idx]
            cands = self._add("retrieve", cfg, name, "candidates", ["retrieve", "--out", "{out}"],
                              ["candidates.parquet"], deps, gpu=cfg.retrieve.backend != "substring",
                              work={"queries": n_classes})
            images = self._add("download", cfg, name, "images",
                               ["download", "--candidates", str(cands.outputs[0]), "--out", "{out}"],
                               ["download_stats.json"], [cands], gpu=False, check=check,
                               work={"download": size.made_per_class * n_classes})
        else:  # shards: the user's own images
            images = Step(id=f"{name}.shards", kind="shards", argv=[], outputs=[Path(arm.shards) / "manifest.parquet"],
                          arm=name, hash=config_hash({"shards": str(Path(arm.shards).resolve())}, 10), gpu=False,
                          cfg=cfg)
            self.index[images.id] = images
        return images, self._curate(name, cfg, images)

    def _curate(self, name: str, cfg: Config, images: Step) -> Step:
        """Score, filter and decontaminate an arm's images; returns the step whose key list is its curated pool."""
        s, arm = self.study, self.study.arms[name]
        shards = str(images.outputs[0].parent)
        score = self._add("score", cfg, name, "score", ["curate", "score", "--shards", shards],
                          [], [images], distributed=True, extra={"shards": shards},
                          work={"inference": self.sizes[name].made_per_class * _num_classes(s.task)})
        score.outputs = [images.outputs[0].parent / "_curation" / "score_config.yaml"]
        keys = score
        if arm.filters:
            keys = self._add("filter", cfg, name, "filter", ["curate", "filter", "--shards", shards, "--out", "{out}"],
                             ["keys.parquet"], [score], gpu=False)
        if arm.decontaminates:
            argv = ["curate", "decontaminate", "--shards", shards, "--out", "{out}", "--task", s.task,
                    "--eval-root", str(s.eval_root)]
            if keys is not score:
                argv += ["--keys", str(keys.outputs[0])]
            keys = self._add("decontaminate", cfg, name, "decontam", argv, ["keys.parquet"], [keys],
                             extra={"eval_root": s.eval_root})
        return keys

    def _subsample(self, name: str, images: Step, keys: Step, scales: set[Scale], others: list[Step],
                   paired: Step | None = None) -> Step:
        """Seeded nested subsets; 'all' is the smallest of the curated pools of every arm that asks for 'all'.

        ``paired``: another arm's subsets step; the subsets are then the images made from its subsets.
        """
        cfg = images.cfg.model_copy(deep=True)  # type: ignore[union-attr]
        numbers = sorted(n for n in scales if n != ALL)  # type: ignore[type-var]
        cfg.curate.scales = [*numbers, *([ALL] if ALL in scales else [])]
        cfg.curate.seeds = list(self.study.seeds)
        argv = ["curate", "subsample", "--shards", str(images.outputs[0].parent), "--out", "{out}"]
        if keys.kind != "score":
            argv += ["--keys", str(keys.outputs[0])]
        deps = [keys]
        if ALL in scales:
            for other in others:
                argv += ["--all-from", str(other.outputs[0] if other.kind != "score" else other.outputs[0].parent.parent)]
                deps.append(other)
        if paired is not None:
            argv += ["--paired-with", str(paired.outputs[0].parent)]
            deps.append(paired)
        outputs = [f"subset_n{n}_s{seed}.parquet" for seed in self.study.seeds for n in cfg.curate.scales]
        return self._add("subsample", cfg, name, "subsets", argv, outputs + ["subsets.json"], deps, gpu=False)

    def _baseline(self) -> Step:
        s = self.study
        cfg = s.stage_config()
        argv = ["eval", "--task", s.task, "--dataset-root", str(s.eval_root), "--output", "{out}/results.jsonl",
                "--arm", "zeroshot_baseline", "--model", cfg.train.model,
                "--pretrained", cfg.train.pretrained or "none"]
        return self._add("baseline", cfg, None, "baseline", argv, ["results.jsonl"], [],
                         extra={"eval_root": s.eval_root}, work={"inference": s.estimates.eval_images})

    def _cell(self, name: str, scale: int, seed: int, lr: float, pools: dict[str, tuple[Step, Step]],
              subsets: dict[str, Step]) -> Step:
        s, arm = self.study, self.study.arms[name]
        cfg = s.stage_config(name)
        parts = arm.mix or {name: 1.0}
        data, keys, weights, deps = [], [], [], []
        for part, frac in parts.items():
            n = scale if not arm.mix else round(scale * frac)  # type: ignore[operator]
            data.append(str(pools[part][0].outputs[0].parent))
            keys.append(str(subsets[part].outputs[0].parent / f"subset_n{n}_s{seed}.parquet"))
            weights.append(float(n) if n != ALL else 1.0)  # weights matter for mixed arms only
            deps.append(subsets[part])
        cfg.train.lr, cfg.train.seed = lr, seed
        cfg.train.arm = cfg.train.arm or name  # results and tables name the study's arms
        cell = {"arm": name, "scale": scale, "seed": seed, "lr": lr}
        extra = {**cell, "eval_root": s.eval_root}
        h = step_hash("train", cfg, [d.hash for d in deps], extra)
        run_name = f"{name}-n{scale}-s{seed}-lr{_fmt_lr(lr)}-{h}"
        logs = self.root / "cells"
        argv = ["train", "--task", s.task, "--train-data", "::".join(data), "--train-keys", "::".join(keys),
                "--logdir", str(logs), "--name", run_name, "--eval-root", str(s.eval_root)]
        if len(data) > 1:
            argv += ["--train-data-weights", "::".join(str(w) for w in weights)]
        epochs = cfg.train.epochs
        images = scale if scale != ALL else min(self.sizes[o].expected_post for o in self.sizes
                                                 if o == name or ALL in self.study.arm_scales(o))
        step = self._add("train", cfg, name, "cell", argv, [], deps, extra=extra, distributed=True,
                         work={"train": images * epochs, "inference": s.estimates.eval_images * epochs})
        step.run_dir = logs / run_name
        step.outputs = [step.run_dir / "results.jsonl", step.run_dir / "train_stats.json"]
        step.cell = cell
        return step

    def _analyze(self, name: str, images: Step, keys: Step, subsets: Step) -> Step:
        s = self.study
        cfg = images.cfg
        scales = s.arm_scales(name)
        seed = s.seeds[0]
        argv = ["analyze", "--task", s.task, "--shards", str(images.outputs[0].parent), "--eval-root", str(s.eval_root),
                "--arm", name, "--out", "{out}"]
        for n in scales:
            argv += ["--keys", str(subsets.outputs[0].parent / f"subset_n{n}_s{seed}.parquet")]
        return self._add("analyze", cfg, name, "analysis", argv, ["analysis.json"], [subsets],
                         extra={"eval_root": s.eval_root, "scales": scales, "seed": seed},
                         work={"inference": sum(n if n != ALL else self.sizes[name].expected_post for n in scales)
                               + s.estimates.eval_images})


def _num_classes(task: str) -> int:
    from synthimg.tasks import get_task

    return get_task(task).num_classes


def write_configs(steps: list[Step]) -> None:
    """Write each step's resolved config where its ``--config`` points."""
    for step in steps:
        if step.config is None or step.cfg is None:
            continue
        step.config.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(to_dict(step.cfg), sort_keys=False)
        if not step.config.is_file() or step.config.read_text() != text:
            atomic_write(step.config, text)


def build_plan(study: StudyConfig, root: str | Path) -> list[Step]:
    """All steps of ``study`` in dependency order."""
    return Planner(study, Path(root)).plan()


def plan_with_coverage(study: StudyConfig, root: str | Path) -> tuple[list[Step], list[dict[str, Any]]]:
    """The steps and, per (arm, scale), whether the planned pool covers the cell and with what margin."""
    planner = Planner(study, Path(root))
    steps = planner.plan()
    return steps, planner.coverage
