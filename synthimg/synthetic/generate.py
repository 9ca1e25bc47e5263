"""Text-to-image generation into shards (``synthimg generate``), any diffusers pipeline.

- **Seeded per image.** Each image's seed is a hash of (global seed, class, caption index,
  image index); its initial latents (and any sampler noise) come from its own CPU
  ``torch.Generator``, so an image can be regenerated alone whatever batch it was made in.
- **Deterministic shards.** Work items (caption x image index, sorted by class and caption)
  are cut into shards of ``images_per_shard``; rank r of a torchrun / srun job takes shards
  r, r + world, ... . A shard is written atomically, and a rerun skips shards whose tar
  exists, so a crash (even ``kill -9``) ends with the same keys and pixels as one clean run.
- **Safety checker off** (it silently returns black images). ``safety_checker: true`` runs
  it and drops flagged images, counting them.
- **Fast.** fp16/bf16, SDPA attention (diffusers' default), channels_last, fused QKV where
  the pipeline offers it, optional ``torch.compile`` with fixed batch shapes (the last batch
  is padded), JPEG encoding in a background thread while the GPU renders the next batch.
- **SDEdit.** With ``init_shards`` the same engine renders from real images (img2img at
  ``strength``), recording the source key, as the paper's Sec. 5.1 analysis does.
"""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.config import Config, GenerateConfig
from synthimg.data.shards import finalize, sample_key, shard_name, write_shard
from synthimg.errors import SynthimgError
from synthimg.pause import pause_point
from synthimg.tasks.spec import TaskSpec

log = logging.getLogger("synthimg.generate")

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"scheduler": "ddim", "steps": 50, "cfg": 2.0, "eta": 0.0},
    "fast": {"scheduler": "dpmsolver++", "steps": 25},
}


def image_seed(seed: int, class_id: int, caption_index: int, image_index: int) -> int:
    from synthimg.synthetic.prompting import hash_seed

    return hash_seed(seed, class_id, caption_index, image_index)


@dataclass
class Item:
    """One image to render."""

    index: int
    class_id: int
    class_name: str
    caption_index: int
    image_index: int
    prompt: str
    meta: dict[str, Any]
    init_image: bytes | None = None
    init_key: str | None = None


def apply_preset(cfg: GenerateConfig) -> GenerateConfig:
    return cfg.model_copy(update=PRESETS[cfg.preset]) if cfg.preset else cfg


def load_captions(path: str | Path, task: TaskSpec) -> pd.DataFrame:
    """The caption table; empty files and classes without captions are errors."""
    path = Path(path)
    if not path.is_file():
        raise SynthimgError(f"caption file not found: {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    missing = {"class_id", "caption"} - set(table.columns)
    if missing:
        raise SynthimgError(f"caption file {path} lacks columns: {', '.join(sorted(missing))}")
    if table.empty:
        raise SynthimgError(f"caption file {path} is empty")
    present = set(table["class_id"].astype(int))
    absent = [task.classnames[c] for c in range(task.num_classes) if c not in present]
    if absent:
        raise SynthimgError(f"{len(absent)} {task.name} classes have no captions in {path} (first: {absent[0]})")
    if "caption_index" not in table:
        table = table.assign(caption_index=table.groupby("class_id").cumcount())
    return table.sort_values(["class_id", "caption_index"], kind="stable").reset_index(drop=True)


def text_items(table: pd.DataFrame, task: TaskSpec, cfg: GenerateConfig) -> list[Item]:
    items = []
    provenance = [c for c in ("caption_method", "llm", "caption_seed") if c in table]
    for row in table.itertuples(index=False):
        meta = {c: _plain(getattr(row, c)) for c in provenance}
        for j in range(cfg.images_per_caption):
            items.append(Item(len(items), int(row.class_id), task.classnames[int(row.class_id)], int(row.caption_index),
                              j, str(row.caption), meta))
    return items


def init_items(init_dir: str | Path, task: TaskSpec, cfg: GenerateConfig) -> list[Item]:
    """SDEdit items: the real images of the init shards (``init_keys`` only, when given), sorted by key.

    The prompt is ``init_template`` with the class name ("a photo of {c}", the paper's App.
    E.1) or, with ``init_prompt: caption``, the image's alt-text.
    """
    from synthimg.data.loader import shard_pipeline
    from synthimg.data.manifest import read_keys
    from synthimg.tasks.spec import render

    keys = read_keys(cfg.init_keys) if cfg.init_keys else None
    records = sorted(shard_pipeline(init_dir, keys=keys, with_meta=True), key=lambda r: r["key"])
    if not records:
        raise SynthimgError(f"no init images in {init_dir}" + (f" for the keys of {cfg.init_keys}" if keys else ""))
    items = []
    for n, r in enumerate(records):
        buf = io.BytesIO()
        r["image"].save(buf, format="PNG")
        name = task.classnames[r["label"]]
        caption = cfg.init_prompt == "caption" and r["text"]
        prompt = r["text"] if caption else render(cfg.init_template, name)
        method = "init_caption" if caption else "init_template"
        for j in range(cfg.images_per_caption):
            items.append(Item(len(items), r["label"], name, n, j, prompt, {"caption_method": method},
                              buf.getvalue(), r["key"]))
    return items


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else (value.item() if hasattr(value, "item") else value)


class Engine:
    """A loaded pipeline that renders batches of items, each with its own generator."""

    def __init__(self, cfg: GenerateConfig, device: str, img2img: bool = False):
        import diffusers
        import torch

        self.cfg, self.device = cfg, device
        local = cfg.model_id.startswith((".", "/", "~")) or Path(cfg.model_id).exists()
        if local and not Path(cfg.model_id).expanduser().is_dir():
            raise SynthimgError(f"model folder not found: {cfg.model_id}")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.dtype, torch.float32) \
            if device.startswith("cuda") else torch.float32
        extra = {} if cfg.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(cfg.model_id, torch_dtype=self.dtype, **extra)
        except (OSError, ValueError, EnvironmentError) as err:
            raise SynthimgError(f"cannot load diffusers model {cfg.model_id!r}: {str(err).splitlines()[0]}") from None
        name, kwargs = SCHEDULERS[cfg.scheduler]
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **kwargs)
        if img2img:
            pipe = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device)
        if cfg.attention == "eager":  # the ablation's baseline: attention as explicit matmuls
            from diffusers.models.attention_processor import AttnProcessor

            pipe.unet.set_attn_processor(AttnProcessor())
            pipe.vae.set_attn_processor(AttnProcessor())
        if device.startswith("cuda"):
            if cfg.channels_last:
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
            # fusing installs diffusers' fused SDPA processor, which would undo attention: eager
            if cfg.fuse_qkv and cfg.attention == "sdpa" and hasattr(pipe, "fuse_qkv_projections"):
                pipe.fuse_qkv_projections()
        if cfg.compile:
            pipe.unet = torch.compile(pipe.unet, fullgraph=False, mode=cfg.compile_mode)
        self.pipe, self.img2img = pipe, img2img
        self.scale = getattr(pipe, "vae_scale_factor", 8)

    def render(self, items: list[Item]) -> list[tuple[Any, bool]]:
        """PIL images (and whether the safety checker flagged each) for ``items``, in order."""
        import torch

        cfg = self.cfg
        n = len(items)
        padded = items + [items[-1]] * (cfg.batch_size - n) if cfg.compile and n < cfg.batch_size else items
        seeds = [image_seed(cfg.seed, it.class_id, it.caption_index, it.image_index) for it in padded]
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = {
            "prompt": [it.prompt for it in padded], "num_inference_steps": cfg.steps, "guidance_scale": cfg.cfg,
            "generator": gens, "output_type": "pil",
        }
        if cfg.negative_prompt:
            kwargs["negative_prompt"] = [cfg.negative_prompt] * len(padded)
        if cfg.scheduler == "ddim":
            kwargs["eta"] = cfg.eta
        if self.img2img:
            from PIL import Image

            kwargs["image"] = [Image.open(io.BytesIO(it.init_image)).convert("RGB").resize((cfg.width, cfg.height))
                               for it in padded]
            kwargs["strength"] = cfg.strength
        else:
            shape = (self.pipe.unet.config.in_channels, cfg.height // self.scale, cfg.width // self.scale)
            latents = torch.stack([torch.randn(shape, generator=g) for g in gens])
            kwargs.update(latents=latents.to(self.device, self.dtype), height=cfg.height, width=cfg.width)
        with torch.inference_mode():
            out = self.pipe(**kwargs)
        flagged = getattr(out, "nsfw_content_detected", None) or [False] * len(padded)
        return list(zip(out.images[:n], [bool(f) for f in flagged[:n]]))


def _encode(image: Any, size: int, quality: int) -> bytes:
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _sample(item: Item, cfg: GenerateConfig, seed: int, data: bytes) -> dict[str, Any]:
    meta = {
        "source": "synthetic", "class_id": item.class_id, "class_name": item.class_name, "prompt": item.prompt,
        **item.meta, "image_seed": seed, "model_id": cfg.model_id, "scheduler": cfg.scheduler, "steps": cfg.steps,
        "cfg": cfg.cfg, "height": cfg.height, "width": cfg.width, "stored_size": cfg.stored_size,
        "caption_index": item.caption_index, "image_index": item.image_index,
    }
    if item.init_key is not None:
        meta.update(init_key=item.init_key, strength=cfg.strength)
    return {"__key__": sample_key(item.index), "jpg": data, "cls": item.class_id, "txt": item.prompt, "json": meta}


def generate(
    items: list[Item], task: TaskSpec, cfg: GenerateConfig, out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Render every shard this rank owns that is not on disk yet; rank 0 finalizes and writes stats."""
    import torch

    from synthimg import dist
    from synthimg.progress import progress_bar
    from synthimg.runtime import carried_gpu_seconds

    out = Path(out)
    rank, world = dist.init()
    device = dist.device()
    per = cfg.images_per_shard
    shards = [items[i : i + per] for i in range(0, len(items), per)]
    owned = [s for s in range(len(shards)) if s % world == rank]
    mine = [s for s in owned if not (out / shard_name("shard", s)).is_file()]
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rendered = flagged_total = 0
    if mine:
        engine = Engine(cfg, device, img2img=items[0].init_image is not None)
        start = time.time()  # images/s counts rendering, not loading the pipeline
        with ThreadPoolExecutor(max_workers=2) as pool, progress_bar(
                total=sum(len(shards[s]) for s in mine), description=f"generate (rank {rank})", enabled=progress) as bar:
            for s in mine:
                pending: list[tuple[Item, int, Future[bytes] | None, str | None]] = []
                for b in range(0, len(shards[s]), cfg.batch_size):
                    batch = shards[s][b : b + cfg.batch_size]
                    for item, (image, flagged) in zip(batch, engine.render(batch)):
                        seed = image_seed(cfg.seed, item.class_id, item.caption_index, item.image_index)
                        if flagged:
                            pending.append((item, seed, None, "safety_flagged"))
                        else:  # JPEG encoding runs beside the next batch's rendering
                            pending.append((item, seed, pool.submit(_encode, image, cfg.stored_size, cfg.jpeg_quality), None))
                    bar.advance(len(batch))
                samples: list[Any] = []
                for item, seed, future, status in pending:
                    if status:
                        flagged_total += 1
                        stub = _sample(item, cfg, seed, b"")
                        samples.append(({"__key__": stub["__key__"], "json": stub["json"]}, status, "flagged by the safety checker"))
                    else:
                        samples.append(_sample(item, cfg, seed, future.result()))
                write_shard(out / shard_name("shard", s), samples)
                rendered += len(shards[s])
                pause_point(f"shard:{s}")
    elapsed = time.time() - start
    parts = dist.gather_to_rank0({"rendered": rendered, "flagged": flagged_total, "elapsed": elapsed,
                             "skipped": len(owned) - len(mine)})
    dist.barrier()
    if rank != 0:
        return {}
    sizes = finalize(out, task.classnames)
    gpus = [torch.cuda.get_device_name(0)] * world if torch.cuda.is_available() else []
    wall = max(p["elapsed"] for p in parts)
    done = sum(p["rendered"] for p in parts)
    stats = {
        "count": len(items), "successes": sum(sizes.values()), "rendered_this_run": done,
        "safety_flagged": sum(p["flagged"] for p in parts), "shards": len(shards),
        "shards_skipped": sum(p["skipped"] for p in parts),
        "duration": round(wall, 3), "images_per_sec": round(done / wall, 3) if wall > 0 and done else None,
        "gpu": {"type": gpus[0] if gpus else "cpu", "count": len(gpus)}, "world_size": world,
        "gpu_seconds": carried_gpu_seconds(out / "generate_stats.json", sum(p["elapsed"] for p in parts if p["rendered"])),
        "model_id": cfg.model_id, "scheduler": cfg.scheduler, "steps": cfg.steps, "cfg": cfg.cfg,
    }
    (out / "generate_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def run(cfg: Config, out: str | Path, captions: str | Path | None = None) -> dict[str, Any]:
    """``generate`` under one process, torchrun or srun: captions (or SDEdit init shards) into
    shards; rank 0 writes the stats and the resolved config (with its preset applied)."""
    from synthimg import dist
    from synthimg.config import save_resolved
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task (--task, or a config.yaml beside the captions)")
    gcfg = apply_preset(cfg.generate)
    spec = get_task(cfg.task)
    if gcfg.init_shards:
        items = init_items(gcfg.init_shards, spec, gcfg)
    elif captions is not None:
        items = text_items(load_captions(captions, spec), spec, gcfg)
    else:
        raise SynthimgError("--captions FILE (or --init-shards DIR for SDEdit) is required")
    rank, _ = dist.init()
    stats = generate(items, spec, gcfg, out)
    if rank == 0:
        save_resolved(cfg.model_copy(update={"generate": gcfg}), out)
    return {**stats, "rank": rank}
