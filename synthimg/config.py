"""Typed configuration for every stage: pydantic models, YAML files and dotted CLI overrides.

One model per stage (``ShardsConfig``, ``CaptionsConfig``, ..., ``EvalConfig``), grouped
under :class:`Config`. Defaults are the paper's recipe (see ``paper-recipe.md``). The fully
resolved config is saved beside every output with :func:`save_resolved`. Every user error
(unknown key, wrong type, bad value, missing file) becomes one :class:`SynthimgError` line
naming the key and, where the set is finite, the valid choices.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthimg.atomic import atomic_write
from synthimg.errors import SynthimgError

Source = Literal["synthetic", "retrieved", "upstream"]
Precision = Literal["fp32", "amp_bf16"]


class StageConfig(BaseModel):
    """Base for all config sections: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ShardsConfig(StageConfig):
    """Writing WebDataset shards (``synthimg shards from-folder`` and every stage that writes shards)."""

    maxcount: int = Field(1000, gt=0, description="samples per tar shard")
    prefix: str = Field("shard", pattern=r"^[A-Za-z0-9_]+$", description="shard file prefix: PREFIX-000000.tar")
    split: str = Field("train", description="split name recorded in _info.json (timm's wds reader)")
    source: Source = "upstream"
    reencode: Literal["jpg", "png", "webp"] = Field(
        "jpg", description="format for images that are not already JPEG, PNG or WebP"
    )
    jpeg_quality: int = Field(95, ge=1, le=100)


class CaptionsConfig(StageConfig):
    """The synthetic arm's caption stage (SynCLR-style prompting, paper Sec. 3.1)."""

    method: Literal["template", "llm"] = "template"
    per_class: int = Field(100, gt=0, description="exactly this many unique captions per class")
    seed: int = 0
    llm: str | None = Field(None, description="hub ID or local path of a causal LM (the paper: Llama-2 7B base)")
    llm_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    llm_backend: Literal["transformers", "vllm", "openai"] | None = Field(
        None, description="None: openai when llm_url is set, else transformers")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(100, gt=0)
    max_chars: int = Field(300, gt=0, description="longer captions are dropped")
    batch_size: int = Field(32, gt=0)
    max_rounds: int = Field(50, gt=0, description="top-up rounds before a class is reported short")
    backgrounds: str | None = Field(None, description=(
        "JSON of backgrounds (per class or a list, from `captions backgrounds`); None: the task's hand-written default"))
    backgrounds_scope: Literal["class", "domain"] | None = Field(None, description=(
        "`captions backgrounds`: one list per class or per domain; None: the task's (ImageNet per class)"))
    backgrounds_count: int | None = Field(None, gt=0, description="places per list; None: the task's (80-100)")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


class GenerateConfig(StageConfig):
    """The synthetic arm's text-to-image stage. Defaults: SD 1.5, DDIM 50 steps, eta 0, CFG 2.0, 512 px stored at 256."""

    model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    preset: Literal["paper", "fast"] | None = Field(None, description="paper: DDIM 50; fast: DPM-Solver++ 25 steps")
    scheduler: Literal["ddim", "dpmsolver++", "pndm", "euler", "euler_a"] = "ddim"
    steps: int = Field(50, gt=0)
    # The paper uses CFG 2.0; the official script's default of 9.0 is a bug.
    cfg: float = Field(2.0, ge=0)
    eta: float = 0.0
    height: int = Field(512, gt=0, multiple_of=8)
    width: int = Field(512, gt=0, multiple_of=8)
    stored_size: int = Field(256, gt=0)
    images_per_caption: int = Field(1, gt=0)
    images_per_shard: int = Field(1000, gt=0)
    batch_size: int = Field(16, gt=0)
    negative_prompt: str | None = None
    seed: int = 0
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp16", description="on GPU; CPU always runs fp32")
    compile: bool = Field(False, description="torch.compile the UNet; batches are padded to a fixed shape")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field("default", description=(
        "torch.compile mode; reduce-overhead captures CUDA graphs"))
    channels_last: bool = Field(True, description="on GPU: UNet and VAE in channels_last memory format")
    fuse_qkv: bool = Field(True, description="on GPU: fused QKV projections where the pipeline offers them")
    attention: Literal["sdpa", "eager"] = Field("sdpa", description=(
        "sdpa: PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels), diffusers' default"))
    safety_checker: bool = Field(False, description="run the checker explicitly and drop (and count) flagged images")
    jpeg_quality: int = Field(95, ge=1, le=100)
    init_shards: str | None = Field(None, description="img2img (SDEdit): render from these real images")
    init_keys: str | None = Field(None, description="SDEdit: only these keys of init_shards (a curated key list)")
    strength: float = Field(0.5, gt=0, le=1, description="SDEdit noise level gamma (the paper sweeps 0.1 ... 1.0)")
    init_prompt: Literal["template", "caption"] = Field("template", description=(
        "SDEdit prompt: init_template with the class name (the paper, App. E.1) or the image's own alt-text"))
    init_template: str = Field("a photo of {c}", description="SDEdit prompt template; {c} is the class name")


class RetrieveConfig(StageConfig):
    """The retrieved arm's candidate search (paper Sec. 3.2)."""

    backend: Literal["knn", "local", "substring"] = "knn"
    per_class: int = Field(1000, gt=0, description="candidates wanted per class")
    k_per_query: int = Field(2000, gt=0, description="the paper: 2000, ImageNet 500")
    max_k: int = Field(10000, gt=0, description="largest k when re-asking a service for more")
    url: str | None = Field(None, description="clip-retrieval compatible service (…/knn-service)")
    indice_name: str = "laion5B-L-14"
    index: str | None = Field(None, description="local index folder (synthimg index build or clip-retrieval)")
    metadata: str | None = Field(None, description="parquet file(s) or glob with url and caption columns")
    indexes: list[Literal["image", "text"]] = Field(default_factory=lambda: ["image", "text"], min_length=1,
                                                    description=(
        "which kNN indexes each query searches: the image index, the caption index, or both (the paper: both, "
        "the union of each index's top-k; a service is asked once per modality)"))
    deduplicate: bool = True
    use_safety_model: bool = True
    use_violence_detector: bool = True
    aesthetic_weight: float = 0.0
    timeout: float = Field(60.0, gt=0)


class IndexConfig(StageConfig):
    """Embedding a collection and building a faiss index (``synthimg index build``)."""

    model: str = Field("ViT-L-14", description="open_clip embedder (the paper: OpenAI CLIP ViT-L/14)")
    pretrained: str | None = "openai"
    factory: str = Field("Flat", description="faiss index factory string, e.g. IVF4096,PQ64 for large collections")
    batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=0)
    nprobe: int = Field(64, gt=0)
    train_samples: int = Field(262_144, gt=0, description=(
        "--embeddings: vectors the IVF index is trained on (a seeded sample over all files; "
        "faiss wants 39-256 per list)"))
    chunk_rows: int = Field(1_000_000, gt=0, description=(
        "--embeddings: vectors added per resumable part (RAM: chunk_rows x dim x 4 bytes; each part file also "
        "holds a copy of the quantiser until the merge)"))


class DownloadConfig(StageConfig):
    """Downloading retrieved candidates with img2dataset, with per-class quotas."""

    per_class: int = Field(1000, gt=0)
    image_size: int = Field(256, gt=0)
    overrequest: float = Field(1.5, ge=1.0, description="URLs asked per missing image in each round")
    max_rounds: int = Field(5, gt=0)
    processes: int = Field(2, gt=0)
    threads: int = Field(32, gt=0)
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    user_agent_token: str = "synthimg"
    timeout: int = Field(10, gt=0)
    retries: int = Field(0, ge=0)
    shard_size: int = Field(1000, gt=0)
    total: int | None = Field(None, gt=0, description=(
        "images wanted in all: when some classes fall short, the others' quotas rise until this many are kept "
        "(a study sets it from its cells); None: per_class only"))
    keep_rounds: bool = Field(False, description=(
        "keep img2dataset's round folders (OUT/_rounds) after the final shards are written; they double the disk use"))


class CurateConfig(StageConfig):
    """Curation shared by both arms (paper Sec. 3.3): score, filter, decontaminate, subsample."""

    model: str = Field("ViT-B-16", description="CLIP scorer; the paper scores with the learner itself")
    pretrained: str | None = "laion2b_s34b_b88k"
    reduce: Literal["max", "mean"] = Field("max", description="the paper: max over templates; the official code: mean")
    top: float = Field(0.3, gt=0, le=1, description="fraction kept per class and arm")
    cap: int | None = Field(10000, gt=0, description="per-class cap keeping the highest scores (the paper's, retrieved)")
    descriptor: Literal["clip", "isc", "none"] = "clip"
    threshold: float | None = Field(None, description="cosine threshold; None: the descriptor's default (ISC 0.604169)")
    phash: bool = Field(True, description=(
        "also run the perceptual-hash pass, no model needed: exact, resized, recompressed, recoloured, cropped and "
        "flipped copies"))
    phash_bits: Literal[64, 256] = Field(256, description="pHash size: 64 (8x8 DCT) or 256 (16x16, fewer false hits)")
    phash_crops: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1], description=(
        "per-side crop fractions: every evaluation image is also hashed cropped by each combination on its four "
        "sides (3 values: 81 variants), so a crop of up to ~10% a side still matches; [0.0]: the whole image only"))
    phash_threshold: float = Field(0.75, gt=0, le=1, description=(
        "a hash match: 1 - Hamming / bits >= this (0.75 = at most 64 of 256 bits differ); then it must be confirmed"))
    phash_verify_ncc: float = Field(0.9, ge=-1, le=1, description=(
        "confirm a hash match: 32 px luminance correlation with the matched variant at least this (-1: no check)"))
    phash_verify_colour: float = Field(20.0, ge=0, description=(
        "confirm a hash match: 8 px colours differ by at most this many grey levels on average (255: no check)"))
    phash_k: int = Field(8, gt=0, description="nearest hash variants tried per candidate (plain and mirrored)")
    phash_index: str = Field("BFlat", description="faiss binary index factory for the variants, e.g. BIVF4096 at scale")
    phash_nprobe: int = Field(16, gt=0, description="lists a binary IVF index probes")
    isc_weights: str | None = Field(None, description="local isc_ft_v107 weights file")
    isc_backbone: str | None = Field(None, description="None: the checkpoint's arch (v107: EfficientNetV2-M)")
    isc_image_size: int | None = Field(None, gt=0, description="None: the checkpoint's input size (v107: 512)")
    against_splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["test"])
    index_factory: str = Field("Flat", description="faiss index factory string for the evaluation descriptors")
    contact_pairs: int = Field(32, ge=0, description="pairs nearest the threshold drawn on the contact sheet")
    stratified: bool = True
    scales: list[Annotated[int, Field(gt=0)] | Literal["all"]] = Field(default_factory=list, description=(
        "subset sizes; 'all': the whole curated pool, cut to the smallest of the --all-from pools"))
    seeds: list[int] = Field(default_factory=lambda: [0])
    batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=0)


class TrainConfig(StageConfig):
    """Fine-tuning (paper Sec. 4, App. D): AdamW (0.9, 0.95), eps 1e-8, wd 0.1 on all parameters, clip 1.0,
    500 warmup steps then cosine, batch 512, fp32."""

    data: list[str] = Field(default_factory=list, description="shard folders; several are mixed by weight")
    keys: list[str] = Field(default_factory=list, description="key list per shard folder ('' for all samples)")
    weights: list[float] = Field(default_factory=list, description="mixing weights per shard folder")
    arm: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "recorded in results (synthetic, retrieved, mixed, ... or a study's arm name); None: the manifest's source"))
    learner: Literal["clip", "timm"] = "clip"
    finetune: Literal["ce", "flyp", "lp"] = "ce"
    model: str = "ViT-B-16"
    pretrained: str | None = "laion2b_s34b_b88k"
    lr: float = Field(1e-5, gt=0, description="the paper sweeps {1e-5, 1e-6}; ImageNet 1e-6")
    wd: float = Field(0.1, ge=0)
    wd_exclude_norms: bool = Field(False, description=(
        "no weight decay on biases and norm gains (a common variant); the paper decays every parameter"))
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = Field(1e-8, gt=0, description="the paper: torch's AdamW default, 1e-8")
    grad_clip: float | None = 1.0
    warmup: int = Field(500, ge=0, description="warmup steps, then cosine decay")
    batch_size: int = Field(512, gt=0, description="global batch, kept constant across world sizes")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step on each rank")
    epochs: int = Field(30, gt=0, description="the paper: 30, ImageNet 10")
    steps_per_epoch: int | None = Field(None, gt=0, description=(
        "None: ceil(samples / batch_size), every sample once per epoch; else that many batches of the stream"))
    workers: int = Field(4, ge=0)
    image_size: int | None = Field(None, gt=0, description="None: the model's own input size (224 for ViT-B/16)")
    crop_scale: tuple[float, float] = (0.9, 1.0)
    augment: bool = Field(True, description="RandomResizedCrop (the paper's only augmentation); off: eval preprocessing")
    precision: Precision = Field("fp32", description="fp32 (the paper) or amp_bf16 (bf16 autocast on GPU)")
    tf32: bool = Field(True, description="with fp32 on GPU: TF32 matmuls and convolutions")
    compile: bool = False
    fused_adamw: bool = Field(True, description="on GPU: torch's fused AdamW kernel (same update, one launch)")
    grad_checkpointing: bool = False
    seed: int = 0
    wise_alphas: list[float] = Field(default_factory=list)
    logs: str = "runs"
    name: str | None = None
    resume: str | None = Field(None, description="'latest' or a checkpoint path")
    eval_root: str | None = Field(None, description="task data for per-epoch val/test evaluation")
    log_every: int = Field(10, gt=0)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)


class EvalConfig(StageConfig):
    """Zero-shot and linear-probe evaluation, at every fine-tuning epoch (paper Sec. 4.1, App. D).

    The probe is the official ``linear_probe.py``: a fresh linear head on L2-normalised frozen
    features, AdamW (0.9, 0.95), lr 1e-2, batch 256, 200 epochs, 200 warmup steps then cosine,
    gradient clip 1.0, wd 0.1 (ImageNet: lr 1e-3, 40 epochs, wd 0). Two probes per epoch:
    train -> val (selects the epoch) and train+val -> test (reported).
    """

    modes: list[Literal["zs", "lp"]] = Field(default_factory=lambda: ["zs", "lp"])
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["val", "test"])
    batch_size: int = Field(256, gt=0)
    workers: int = Field(4, ge=0)
    lp_lr: float = Field(1e-2, gt=0)
    lp_batch_size: int = Field(256, gt=0)
    lp_epochs: int = Field(200, gt=0)
    lp_wd: float = Field(0.1, ge=0)
    lp_warmup: int = Field(200, ge=0, description="probe warmup steps, then cosine decay")
    lp_grad_clip: float | None = Field(1.0, gt=0)
    lp_beta1: float = 0.9
    lp_beta2: float = 0.95
    precision: Precision = Field("fp32", description="fp32 (the official evaluation) or amp_bf16 on GPU")
    memo_mb: int = Field(1024, ge=0, description="keep each eval split's preprocessed images in memory, up to this "
                         "many MiB in all, so epochs and cells in one process decode it once (0: decode every time)")


class Config(StageConfig):
    """Everything a run needs; each stage reads its own section."""

    task: str | None = None
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    captions: CaptionsConfig = Field(default_factory=CaptionsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str | None) -> str | None:
        if name is not None:
            from synthimg.tasks import get_task

            try:
                get_task(name)
            except SynthimgError as err:
                raise ValueError(str(err)) from None
        return name


M = TypeVar("M", bound=BaseModel)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.lr=1e-5", "task=dtd"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise SynthimgError(f"override {item!r} is not of the form key.subkey=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SynthimgError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[leaf] = value
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names allowed at ``loc`` (the parent of an unknown key), walking nested models."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """One line per the CLI contract: the dotted key, what is wrong, the choices where finite."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            hint = f"; valid keys: {', '.join(valid)}" if valid else ""
            parts.append(f"unknown config key '{key}'{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            shown = "" if isinstance(given, dict) else f" ({given!r})" if len(repr(given)) <= 80 else f" ({repr(given)[:77]}...)"
            parts.append(f"bad value for '{key}'{shown}: {msg}")
    return "; ".join(parts)


def validate(data: dict[str, Any], model: type[M] = Config) -> M:  # type: ignore[assignment]
    """Validate a plain dict into ``model``; errors become one :class:`SynthimgError` line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SynthimgError(format_validation_error(err, model)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is one error line."""
    path = Path(path)
    if not path.is_file():
        raise SynthimgError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise SynthimgError(f"config file {path} is not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise SynthimgError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    model: type[M] = Config,  # type: ignore[assignment]
) -> M:
    """Resolve a config: model defaults < YAML file < ``extra`` (CLI flags) < dotted overrides."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    if extra:
        data = deep_merge(data, extra)
    data = deep_merge(data, parse_overrides(overrides))
    return validate(data, model)


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A JSON-safe dict of a config (tuples become lists)."""
    return cfg.model_dump(mode="json")


def config_hash(cfg: BaseModel | dict[str, Any], length: int = 12) -> str:
    """A stable short hash of a resolved config (key order does not matter)."""
    data = to_dict(cfg) if isinstance(cfg, BaseModel) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def save_resolved(cfg: BaseModel, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside a stage's outputs (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write(directory / name, yaml.safe_dump(to_dict(cfg), sort_keys=False))
