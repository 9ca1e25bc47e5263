"""Pretrain the toy world's models on its upstream, as LAION-scale models are trained on LAION.

Three stages, each written to the weights folder and skipped on a rerun once its output is
there (the UNet stage also resumes from its last checkpoint, exactly: every step's batch,
noise and timesteps come from ``(seed, step)``):

- **clip**: tiny CLIP (open_clip config ``synthimg-toy-clip``), the symmetric contrastive loss
  of open_clip (``open_clip.loss.ClipLoss``) on upstream (image, caption) pairs.
- **vae**: a diffusers ``AutoencoderKL`` with an 8x8x8 latent (f=4), trained to reconstruct.
- **unet**: a ``UNet2DConditionModel`` with text cross-attention at both resolutions, trained
  with the standard noise-prediction objective (Min-SNR-gamma weighted), conditioned like Stable Diffusion on a
  *frozen CLIP text encoder trained on the same upstream*: the toy CLIP's text tower,
  converted to ``transformers``' ``CLIPTextModel`` (:mod:`synthimg.models.clip_text`) with
  OpenAI CLIP's tokenizer. Captions are dropped 15% of the time for classifier-free guidance,
  and the shipped weights are an EMA (0.999) of the UNet's.

The pipeline is a real diffusers ``StableDiffusionPipeline`` folder in half precision, so the
toy models load through the same paths as the real ones:
``create_clip("synthimg-toy-clip", pretrained=FILE)`` and
``StableDiffusionPipeline.from_pretrained(FOLDER)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from synthimg.atomic import atomic_path
from synthimg.toyworld import world as W

log = logging.getLogger("synthimg.toyworld")

WEIGHTS = Path(__file__).resolve().parent / "weights"
CLIP_FILE = "toy_clip.safetensors"
SD_FOLDER = "toy_sd"
VAE_FOLDER = "_vae"  # the vae stage's output before it joins the pipeline
STATS_FILE = "pretrain_stats.json"
CONTEXT = 32  # the toy CLIP's text context; every upstream caption fits (tested)


def shipped_clip() -> Path:
    return WEIGHTS / CLIP_FILE


def shipped_sd() -> Path:
    return WEIGHTS / SD_FOLDER


PREDICTIONS = ("epsilon", "v_prediction")  # what the UNet may predict (diffusers' prediction_type)


@dataclass
class Recipe:
    """Every setting of the three stages; its hash names what a stage's output was made with."""

    clip_steps: int = 2500
    clip_batch: int = 256
    clip_lr: float = 1e-3
    vae_steps: int = 1500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_latent: int = 8
    unet_steps: int = 11000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    unet_warmup: int = 200
    unet_channels: tuple[int, ...] = (48, 96)
    unet_text_time: bool = False  # also add the attention-pooled caption to the timestep embedding (FiLM)
    unet_prediction: str = "epsilon"  # what the UNet predicts: "epsilon" (SD 1.5) or "v_prediction" (SD 2)
    unet_snr_gamma: float = 5.0  # Min-SNR-gamma loss weighting (Hang et al. 2023; 5, theirs, is shipped); 0: plain MSE
    caption_dropout: float = 0.15
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> "Recipe":
        """A few steps of everything, for tests."""
        return cls(clip_steps=5, clip_batch=32, vae_steps=3, vae_batch=16, unet_steps=4, unet_batch=16,
                   unet_warmup=2, checkpoint_every=2, seed=seed)

    def __post_init__(self) -> None:
        import math

        self.unet_snr_gamma = float(self.unet_snr_gamma)  # 5 and 5.0 are one recipe, with one hash
        if self.unet_prediction not in PREDICTIONS:
            raise ValueError(f"unet_prediction must be one of {', '.join(PREDICTIONS)}, not {self.unet_prediction!r}")
        if not (math.isfinite(self.unet_snr_gamma) and self.unet_snr_gamma >= 0):
            raise ValueError(f"unet_snr_gamma must be a finite number >= 0 (0: plain MSE), not {self.unet_snr_gamma}")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("caption_dropout and ema_decay must lie in [0, 1)")

    def override(self, pairs: list[str]) -> "Recipe":
        """A copy with ``KEY=VALUE`` settings applied (tuples as ``48,96``); an unknown key or a
        bad value is a ``ValueError`` of one line. Each value takes its field's declared type."""
        from dataclasses import fields, replace

        types = {f.name: type(f.default) for f in fields(self)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in types:
                raise ValueError(f"bad recipe setting {pair!r}: use KEY=VALUE with KEY one of {', '.join(types)}")
            kind = types[key]
            try:
                if kind is tuple:
                    changes[key] = tuple(int(v) for v in value.split(","))
                elif kind is bool:
                    changes[key] = {"true": True, "false": False}[value.lower()]
                else:
                    changes[key] = kind(value)
            except (KeyError, ValueError):
                noun = {tuple: "a comma-separated list of ints", bool: "true or false", int: "an int", float: "a number",
                        str: "a string"}[kind]
                raise ValueError(f"bad recipe setting {pair!r}: {key} takes {noun}") from None
        return replace(self, **changes)

    def stage_hash(self, stage: str) -> str:
        keys = {"clip": ["clip_", "seed"], "vae": ["vae_", "seed"], "unet": ["unet_", "caption", "ema", "seed"]}[stage]
        chosen = {k: v for k, v in asdict(self).items() if any(k.startswith(p) for p in keys)}
        for key, neutral in _NEUTRAL.items():  # a switch left at its neutral value keeps older recipes' hashes
            if key in chosen and chosen[key] == neutral:
                del chosen[key]
        if stage == "unet":  # the UNet is trained on the other two stages' outputs
            chosen["upstream"] = [self.stage_hash("clip"), self.stage_hash("vae")]
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


_NEUTRAL = {"unet_text_time": False, "unet_prediction": "epsilon", "unet_snr_gamma": 0.0}


def load_upstream(world: Path) -> tuple[Any, list[str]]:
    """All upstream images as a uint8 tensor (N, 3, 32, 32) and their captions."""
    import numpy as np
    import torch

    from synthimg.data.loader import shard_pipeline
    from synthimg.data.shards import list_shards

    shards = list_shards(Path(world) / "upstream" / "shards")
    if not shards:
        raise FileNotFoundError(f"no upstream shards under {world}/upstream/shards: build it with `synthimg toyworld build`")
    images, captions = [], []
    for rec in shard_pipeline([str(p) for p in shards]):
        images.append(np.asarray(rec["image"].convert("RGB").resize((W.SIZE, W.SIZE)), dtype=np.uint8))
        captions.append(rec["text"])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def _batches(n: int, batch: int, steps: int, seed: int) -> Iterator[Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        yield order[pos : pos + batch]
        pos += batch


def _step_batch(n: int, batch: int, step: int, seed: int) -> Any:
    """Step ``step``'s (1-based) sample indices: epoch-wise permutations keyed by (seed, epoch)."""
    import torch

    per_epoch = n // batch
    epoch, pos = divmod(step - 1, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[pos * batch : (pos + 1) * batch]


def pretrain_clip(world: Path, out: Path, steps: int = 2500, batch: int = 256, lr: float = 1e-3, seed: int = 0,
                  echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Contrastive pretraining of ``synthimg-toy-clip`` on the upstream; writes ``OUT`` (safetensors, fp16)."""
    import torch
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    from synthimg.models.clip import create_clip

    torch.manual_seed(seed)
    images, captions = load_upstream(world)
    bundle = create_clip("synthimg-toy-clip", None)
    model = bundle.model.train()
    tokens = bundle.tokenizer(captions)
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = ClipLoss()
    start, losses = time.time(), []
    for step, idx in enumerate(_batches(len(images), batch, steps, seed), 1):
        x = (images[idx].float() / 255 - mean) / std
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        img, txt, scale = model(x, tokens[idx])[:3]
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps:
            echo(f"clip step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.3f} "
                 f"({time.time() - start:.0f}s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(out))
    return {"steps": steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.time() - start}


def pretrain_vae(world: Path, out: Path, recipe: Recipe, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """An ``AutoencoderKL`` (latent 8x8 x ``vae_latent``) trained to reconstruct the upstream."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    start = time.time()
    images, _ = load_upstream(world)
    pixels = images.float() / 127.5 - 1
    blocks = len(recipe.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=recipe.vae_latent,
                        block_out_channels=tuple(recipe.vae_channels), down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1, norm_num_groups=16,
                        sample_size=W.SIZE, mid_block_add_attention=False)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.vae_lr, total_steps=recipe.vae_steps,
                                                pct_start=0.05)
    losses = []
    for step, idx in enumerate(_batches(len(pixels), recipe.vae_batch, recipe.vae_steps, recipe.seed), 1):
        post = vae.encode(pixels[idx]).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, pixels[idx]) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == recipe.vae_steps:
            echo(f"vae step {step}/{recipe.vae_steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                 f"({time.time() - start:.0f}s)")
    vae.save_pretrained(out)  # fp32 until the pipeline is written
    return {"steps": recipe.vae_steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "seconds": time.time() - start}


def text_encoder_from_clip(clip_file: Path, tokenizer_dir: Path) -> tuple[Any, Any]:
    """The toy CLIP's text tower as a frozen ``CLIPTextModel`` and OpenAI CLIP's tokenizer (context 32)."""
    from synthimg.models.clip import create_clip
    from synthimg.models.clip_text import clip_tokenizer, to_hf_text_model

    bundle = create_clip("synthimg-toy-clip", str(clip_file))
    text = to_hf_text_model(bundle.model.float()).requires_grad_(False)
    return text, clip_tokenizer(tokenizer_dir, CONTEXT)


def _unet(recipe: Recipe, latent_channels: int, text_width: int) -> Any:
    from diffusers import UNet2DConditionModel

    n = len(recipe.unet_channels)
    return UNet2DConditionModel(sample_size=W.SIZE // 4, in_channels=latent_channels, out_channels=latent_channels,
                                layers_per_block=1, block_out_channels=tuple(recipe.unet_channels),
                                down_block_types=("CrossAttnDownBlock2D",) * n,
                                up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=text_width,
                                attention_head_dim=16, norm_num_groups=16,
                                # a second, global path for the caption: pooled and added to the timestep
                                # embedding, it reaches every ResNet block as a scale and shift (FiLM)
                                addition_embed_type="text" if recipe.unet_text_time else None,
                                addition_embed_type_num_heads=4,
                                resnet_time_scale_shift="scale_shift" if recipe.unet_text_time else "default")


def scheduler(prediction: str = "epsilon") -> Any:
    """SD 1.5's noise schedule (scaled linear betas 0.00085..0.012, 1000 steps) as a DDIM scheduler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction)


def diffusion_loss(pred: Any, x0: Any, noise: Any, t: Any, sched: Any, snr_gamma: float = 0.0) -> Any:
    """The denoising loss for the scheduler's prediction type, optionally Min-SNR-gamma weighted.

    With ``snr_gamma`` > 0 each sample's MSE is weighted by min(SNR, gamma) / SNR for epsilon
    targets and min(SNR, gamma) / (SNR + 1) for v targets (Hang et al., "Efficient Diffusion
    Training via Min-SNR Weighting Strategy", 2023), so the many easy low-noise steps stop
    dominating the gradient.
    """
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    kind = sched.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"unet_prediction must be 'epsilon' or 'v_prediction', not {kind!r}")
    if snr_gamma <= 0:
        return F.mse_loss(pred, target)
    snr = compute_snr(sched, t)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * weight).mean()


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step <= recipe.unet_warmup:
        return step / max(1, recipe.unet_warmup)
    done = (step - recipe.unet_warmup) / max(1, recipe.unet_steps - recipe.unet_warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def pretrain_unet(world: Path, out: Path, clip_file: Path, vae_dir: Path, recipe: Recipe,
                  echo: Callable[[str], Any] = print,
                  evaluate: Callable[[Any, int], str] | None = None, eval_every: int = 0) -> dict[str, Any]:
    """Train the UNet on VAE latents and frozen text states; writes the pipeline folder at ``OUT``.

    A checkpoint (UNet, EMA, optimiser) is written every ``checkpoint_every`` steps beside
    ``OUT``; a rerun continues from it and ends with the same weights as an uninterrupted run.
    ``evaluate(pipe, step)``, if given, is called every ``eval_every`` steps on the EMA weights.
    """
    import copy

    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from diffusers.training_utils import EMAModel

    torch.manual_seed(recipe.seed)
    start = time.time()
    images, captions = load_upstream(world)
    text, tok = text_encoder_from_clip(clip_file, out.parent / "_tokenizer")
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    pixels = images.float() / 127.5 - 1
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 512]).latent_dist.mean for i in range(0, len(pixels), 512)])
        scale = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scale)
        latents = latents * scale
        ids = tok(captions, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt").input_ids
        empty = tok([""], padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
        states = torch.cat([text(ids[i : i + 1024])[0] for i in range(0, len(ids), 1024)])
        empty_state = text(empty)[0]
    unet = _unet(recipe, latents.shape[1], states.shape[-1])
    sched = scheduler(recipe.unet_prediction)
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.01)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s + 1, recipe))
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
    ckpt = out.parent / "_unet_checkpoint.pt"
    first = 1
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["hash"] == recipe.stage_hash("unet"):
            unet.load_state_dict(state["unet"])
            opt.load_state_dict(state["opt"])
            lr.load_state_dict(state["lr"])
            ema.load_state_dict(state["ema"])
            first = state["step"] + 1
            echo(f"unet: resuming after step {state['step']}")

    def pipeline(weights: Any) -> Any:
        return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=weights.eval(),
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    def ema_unet() -> Any:
        shadow = copy.deepcopy(unet)
        ema.copy_to(shadow.parameters())
        return shadow

    losses: list[float] = []
    evals: dict[int, str] = {}
    for step in range(first, recipe.unet_steps + 1):
        unet.train()
        idx = _step_batch(len(latents), recipe.unet_batch, step, recipe.seed + 1)
        g = torch.Generator().manual_seed(recipe.seed * 7_919 + step)
        x0, cond = latents[idx], states[idx].clone()
        cond[torch.rand(len(idx), generator=g) < recipe.caption_dropout] = empty_state
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        loss = diffusion_loss(unet(sched.add_noise(x0, noise, t), t, cond).sample, x0, noise, t, sched,
                              recipe.unet_snr_gamma)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        if step % 100 == 0 or step == recipe.unet_steps:
            echo(f"unet step {step}/{recipe.unet_steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                 f"({time.time() - start:.0f}s)")
        if evaluate is not None and eval_every and step % eval_every == 0:
            evals[step] = evaluate(pipeline(ema_unet()), step)
            echo(f"unet step {step}: {evals[step]}")
        if step % recipe.checkpoint_every == 0 and step < recipe.unet_steps:
            with atomic_path(ckpt) as tmp:
                torch.save({"hash": recipe.stage_hash("unet"), "step": step, "unet": unet.state_dict(),
                            "opt": opt.state_dict(), "lr": lr.state_dict(), "ema": ema.state_dict()}, tmp)
    pipe = pipeline(ema_unet())
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    _slim_tokenizer(out / "tokenizer")
    ckpt.unlink(missing_ok=True)
    return {"steps": recipe.unet_steps, "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "vae_scaling_factor": scale, "seconds": time.time() - start, "evals": evals}


def _slim_tokenizer(folder: Path) -> None:
    """Ship vocab.json + merges.txt (1.5 MB) instead of tokenizer.json (3.6 MB, rebuilt from them on load).

    transformers 5 saves only tokenizer.json, so the two files are written here.
    """
    from synthimg.models.clip_bpe import write_clip_tokenizer_files

    write_clip_tokenizer_files(folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        (folder / "tokenizer.json").unlink(missing_ok=True)


def pretrain(world: Path, out: Path = WEIGHTS, recipe: Recipe | None = None, echo: Callable[[str], Any] = print,
             evaluate: Callable[[Any, int], str] | None = None, eval_every: int = 0) -> dict[str, Any]:
    """Reproduce the shipped weights from the world, stage by stage; finished stages are kept."""
    import shutil

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats_path = out / STATS_FILE
    stats: dict[str, Any] = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if stats.get("format") != 2:
        stats = {"format": 2}

    def done(stage: str, path: Path) -> bool:
        return path.exists() and stats.get(stage, {}).get("hash") == recipe.stage_hash(stage)

    def record(stage: str, result: dict[str, Any]) -> None:
        stats[stage] = {**result, "hash": recipe.stage_hash(stage)}
        stats["recipe"] = asdict(recipe)
        stats_path.write_text(json.dumps(stats, indent=1))

    if not done("clip", out / CLIP_FILE):
        stats.pop("unet", None)
        record("clip", pretrain_clip(world, out / CLIP_FILE, recipe.clip_steps, recipe.clip_batch, recipe.clip_lr,
                                     recipe.seed, echo))
    else:
        echo("clip: done, kept")
    shipped_vae = out / SD_FOLDER / "vae"
    if not (out / VAE_FOLDER).exists() and stats.get("vae", {}).get("hash") == recipe.stage_hash("vae") \
            and (shipped_vae / "config.json").is_file() and not done("unet", out / SD_FOLDER / "model_index.json"):
        # the finished VAE lives on in the pipeline folder (as fp16: a new UNet trains on its rounded weights)
        shutil.copytree(shipped_vae, out / VAE_FOLDER)
        echo("vae: done, taken from the pipeline folder")
    elif not done("vae", out / VAE_FOLDER) and not done("unet", out / SD_FOLDER / "model_index.json"):
        record("vae", pretrain_vae(world, out / VAE_FOLDER, recipe, echo))
    else:
        echo("vae: done, kept")
    if not done("unet", out / SD_FOLDER / "model_index.json"):
        if (out / SD_FOLDER).exists():
            shutil.rmtree(out / SD_FOLDER)
        record("unet", pretrain_unet(world, out / SD_FOLDER, out / CLIP_FILE, out / VAE_FOLDER, recipe, echo,
                                     evaluate, eval_every))
    else:
        echo("unet: done, kept")
    for scratch in (out / VAE_FOLDER, out / "_tokenizer"):
        if scratch.exists():
            shutil.rmtree(scratch)
    return stats
