"""The study config: a grid over arms x scales x seeds x learning rates for one task.

A study YAML holds ``base`` (stage sections shared by every step, the same schema as
:class:`synthimg.config.Config`), one entry per arm (how its pool is built, its own
section overrides and scales), the grid, the executor and the cost figures the dry run
uses. Unknown keys are errors, as everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from synthimg.config import (
    Config,
    StageConfig,
    deep_merge,
    parse_overrides,
    read_yaml,
    validate,
)
from synthimg.errors import SynthimgError

ALL = "all"
Scale = Annotated[int, Field(gt=0)] | Literal["all"]


class IndexSpec(StageConfig):
    """A local faiss index the study builds before a ``retrieve.backend: local`` arm queries it."""

    shards: str | None = Field(None, description="image collection to embed (shard folder)")
    captions: str | None = Field(None, description="caption metadata parquet (url, caption) for a caption index")
    embeddings: str | None = Field(None, description=(
        "released embeddings in clip-retrieval's layout (img_emb/, text_emb/, metadata/), as LAION's: an IVF index "
        "with lists on disk is built from them (index.factory), nothing is embedded"))

    @model_validator(mode="after")
    def _one_source(self) -> "IndexSpec":
        if self.embeddings and (self.shards or self.captions):
            raise ValueError("index: embeddings (released) builds the index alone; drop shards/captions")
        return self
    share_classes: int | None = Field(None, gt=0, description=(
        "classes (over every task) that this index serves; the report charges this task its share of the build. "
        "None: this task bears all of it"))


class ArmSpec(StageConfig):
    """How one arm's pool is made; the study then curates, subsamples and trains on it."""

    source: Literal["synthetic", "retrieved", "shards", "mixed", "sdedit"]
    pool_per_class: int | None = Field(
        None, gt=0, description=(
            "images made per class before curation (captions x images per caption, or the download quota); "
            "None: sized from the largest scale through every expected loss (`losses:`)"))
    shards: str | None = Field(None, description="source 'shards': an existing shard folder (your own images)")
    index: IndexSpec | None = Field(None, description="retrieved + local backend: build this index first")
    mix: dict[str, float] = Field(default_factory=dict, description="source 'mixed': arm name -> fraction")
    init_from: str | None = Field(None, description=(
        "source 'sdedit': the arm whose curated images are noised and denoised (generate.strength is gamma); "
        "its subsets are the SDEdit versions of that arm's subsets (paper Sec. 5, App. E.1)"))
    scales: list[Scale] | None = Field(None, description="None: the study's scales; 'all': everything that survives")
    filter: bool | None = Field(None, description=(
        "CLIP-score top fraction per class, then the cap; None: on, except for sdedit arms (their images come "
        "from an already curated pool)"))
    decontaminate: bool | None = Field(None, description="None: on for retrieved and shards arms (the paper)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="stage sections for this arm only")

    @model_validator(mode="after")
    def _check(self) -> "ArmSpec":
        if self.source == "shards" and not self.shards:
            raise ValueError("a shards arm needs shards: FOLDER")
        if self.source == "sdedit" and not self.init_from:
            raise ValueError("an sdedit arm needs init_from: the arm whose images it renders from")
        if self.source == "mixed" and (len(self.mix) < 2 or abs(sum(self.mix.values()) - 1) > 1e-6):
            raise ValueError("a mixed arm needs mix: {arm: fraction, ...} over two or more arms, summing to 1")
        return self

    @property
    def filters(self) -> bool:
        return self.filter if self.filter is not None else self.source != "sdedit"

    @property
    def decontaminates(self) -> bool:
        return self.decontaminate if self.decontaminate is not None else self.source in ("retrieved", "shards")


class LossSpec(StageConfig):
    """Expected losses between asking for images and training on them; pools are sized through them."""

    # img2dataset measured 95% at LAION's release and about 1 point a month of link rot since
    # (rom1504/img2dataset#277: 87% on LAION-400M after 8 months); 0.7 is that trend in 2024.
    link_success: float = Field(0.7, gt=0, le=1, description="fraction of candidate URLs that download")
    decontam_drop: float = Field(0.06, ge=0, lt=1, description=(
        "fraction dropped by the descriptor pass; the paper's Table 1 tops out at 5.6% (ImageNet, train)"))
    phash_drop: float = Field(0.01, ge=0, lt=1, description="fraction dropped by the pHash pass")
    generate_drop: float = Field(0.0, ge=0, lt=1, description="synthetic images dropped (an explicit safety checker)")
    margin: float = Field(0.05, ge=0, description="extra asked for on top of the expected losses")


class SlurmSpec(StageConfig):
    """submitit parameters for SLURM jobs (``executor.kind: slurm``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = Field(8, gt=0)
    cpus_per_gpu: int = Field(8, gt=0)
    mem_gb: int | None = None
    timeout_min: int = Field(24 * 60, gt=0)
    cpu_timeout_min: int = Field(12 * 60, gt=0, description="steps that need no GPU (retrieve, download, filter)")
    folder: str | None = Field(None, description="submitit logs; default STUDY/slurm")
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None, description="submitit's cluster; None: auto (SLURM where sbatch exists). local/debug for testing")
    wait: bool = Field(True, description="wait for the jobs, then collect results and build the report")


class ExecutorSpec(StageConfig):
    kind: Literal["local", "slurm"] = "local"
    gpus: int | None = Field(None, ge=0, description="local GPUs per step; None: all visible (torchrun when > 1)")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)


class Estimates(StageConfig):
    """Throughputs for the dry run's cost estimate; recorded stats in the study folder take precedence."""

    # Paper Sec. 3.1 / App.: about 12 h on 64 A100 per 1M SD 1.5 images (DDIM 50, 512 px):
    # 1e6 / (12 * 3600 * 64) = 0.36 images/s per GPU.
    generate_images_per_gpu_s: float = Field(0.36, gt=0)
    # Assumed for ViT-B/16 at 224 px in bf16 on an A100; measure with scripts/bench/train.py.
    train_samples_per_gpu_s: float = Field(1000.0, gt=0)
    # Forward passes only (scoring, embedding, evaluation); assumed.
    inference_images_per_gpu_s: float = Field(3000.0, gt=0)
    # img2dataset on one node (CPU); assumed.
    download_images_per_s: float = Field(500.0, gt=0)
    # Llama-2 7B with vLLM's continuous batching on one A100; assumed (the paper gives no figure).
    llm_new_tokens_per_gpu_s: float = Field(2000.0, gt=0)
    llm_prompt_tokens_per_gpu_s: float = Field(20000.0, gt=0)
    eval_images: int = Field(10000, ge=0, description="test+val images evaluated per epoch and cell")
    gpus: int = Field(1, gt=0, description="GPUs per step in the estimate (for wall-clock hours)")


class StudyConfig(StageConfig):
    """One study: a task, its arms, the grid and where it runs."""

    name: str = "study"
    task: str
    out: str = Field("studies/study", description="study folder (relative paths: to the working directory)")
    eval_root: str | None = Field(None, description="the task's data (torchvision root or CLIP_benchmark folder)")
    arms: dict[str, ArmSpec]
    scales: list[Scale] = Field(default_factory=list, description="images per cell after curation; 'all' allowed")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = Field(default_factory=lambda: [1e-5])
    baseline: bool = Field(True, description="evaluate the pretrained learner (the zero-shot baseline row)")
    analysis: bool = Field(True, description="FID/KID to the test set, CLIP-score histograms, galleries")
    base: dict[str, Any] = Field(default_factory=dict, description="stage sections shared by every step")
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    estimates: Estimates = Field(default_factory=Estimates)
    losses: LossSpec = Field(default_factory=LossSpec)

    def check(self) -> "StudyConfig":
        """Cross-field checks; every stage section must validate, so a typo fails before any work."""
        if not self.arms:
            raise SynthimgError("a study needs at least one arm")
        for name, arm in self.arms.items():
            if not (arm.scales or self.scales):
                raise SynthimgError(f"arm {name!r} has no scales (set scales: or arms.{name}.scales)")
            for part in arm.mix:
                if part not in self.arms or self.arms[part].source == "mixed":
                    raise SynthimgError(f"mixed arm {name!r} names {part!r}, which is not a non-mixed arm")
            if arm.source == "mixed" and ALL in self.arm_scales(name):
                raise SynthimgError(f"mixed arm {name!r}: scale 'all' is for plain arms (give numbers)")
            if arm.source == "sdedit":
                init = self.arms.get(arm.init_from or "")
                if init is None or init.source in ("mixed", "sdedit"):
                    raise SynthimgError(f"sdedit arm {name!r}: init_from names {arm.init_from!r}, not a plain arm")
                extra = set(self.arm_scales(name)) - set(self.arm_scales(arm.init_from))  # type: ignore[arg-type]
                if extra:
                    raise SynthimgError(f"sdedit arm {name!r}: scales {sorted(map(str, extra))} are not scales of "
                                        f"{arm.init_from!r}, whose subsets it renders")
        self.stage_config()
        for name in self.arms:
            self.stage_config(name)
        return self

    def arm_scales(self, arm: str) -> list[Scale]:
        """The arm's scales, numbers ascending, then 'all'."""
        scales = self.arms[arm].scales or self.scales
        return sorted(s for s in scales if s != ALL) + ([ALL] if ALL in scales else [])  # type: ignore[type-var]

    def stage_config(self, arm: str | None = None) -> Config:
        """The stage sections for ``arm``'s steps: defaults < base < the arm's overrides; the task set."""
        data = deep_merge(self.base, self.arms[arm].overrides) if arm else dict(self.base)
        data["task"] = self.task
        try:
            return validate(data)
        except SynthimgError as err:
            where = f"arms.{arm}.overrides" if arm and self.arms[arm].overrides else "base"
            raise SynthimgError(f"{where}: {err}") from None


def _with_parents(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A study YAML merged over the file it ``extends`` (relative to it); a key set to null removes it."""
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = (path.parent / str(parent)).resolve()
    if base in seen or base == path.resolve():
        raise SynthimgError(f"{path}: 'extends' loops back to {base}")
    return _merge_removing(_with_parents(base, (*seen, path.resolve())), data)


def _merge_removing(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if value is None and key in out and isinstance(out[key], dict):
            del out[key]  # `arms: {synthetic: null}` drops the parent's arm
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_removing(out[key], value)
        else:
            out[key] = value
    return out


def load_study(path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> StudyConfig:
    """Read a study YAML (merged over the study it ``extends``) with dotted overrides (``seeds=[0]``)."""
    data = deep_merge(_with_parents(Path(path)), parse_overrides(overrides))
    if out is not None:
        data["out"] = str(out)
    return validate(data, StudyConfig).check()
