"""Pretrain the toy world's models on its upstream, as LAION-scale models are trained on LAION.

- **Tiny CLIP** (open_clip config ``synthimg-toy-clip``): the symmetric contrastive loss of
  open_clip (``open_clip.loss.ClipLoss``) on upstream (image, caption) pairs.
- **Tiny text-to-image model**: a real diffusers ``StableDiffusionPipeline`` folder
  (``AutoencoderKL``, ``UNet2DConditionModel``, ``CLIPTextModel``, ``CLIPTokenizer`` whose
  vocabulary is built from the world's words, ``DDIMScheduler``). The VAE is trained to
  reconstruct, then UNet and text encoder with the standard noise-prediction objective,
  dropping 10% of captions for classifier-free guidance.

Both are written in half precision (safetensors) and load through the same paths as the real
models: ``create_clip("synthimg-toy-clip", pretrained=FILE)`` and
``StableDiffusionPipeline.from_pretrained(FOLDER)``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from synthimg.toyworld import world as W

log = logging.getLogger("synthimg.toyworld")

WEIGHTS = Path(__file__).resolve().parent / "weights"
CLIP_FILE = "toy_clip.safetensors"
SD_FOLDER = "toy_sd"


def shipped_clip() -> Path:
    return WEIGHTS / CLIP_FILE


def shipped_sd() -> Path:
    return WEIGHTS / SD_FOLDER


def load_upstream(world: Path) -> tuple[Any, list[str]]:
    """All upstream images as a uint8 tensor (N, 3, 32, 32) and their captions."""
    import numpy as np
    import torch

    from synthimg.data.loader import shard_pipeline
    from synthimg.data.shards import list_shards

    images, captions = [], []
    for rec in shard_pipeline([str(p) for p in list_shards(Path(world) / "upstream" / "shards")]):
        images.append(np.asarray(rec["image"].convert("RGB").resize((W.SIZE, W.SIZE)), dtype=np.uint8))
        captions.append(rec["text"])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def _world_words() -> list[str]:
    """Every word the world's captions and the tasks' prompts use."""
    from synthimg.tasks import get_task

    text = " ".join(
        [" ".join(v) for v in W.SYNONYMS.values()] + list(W.UPSTREAM_COLOURS) + list(W.BENCH_COLOURS)
        + W.BACKGROUNDS + W.FILLER + W.UNRELATED + ["small big on background and a an the of photo image"]
        + [t for name in W.TASKS for t in get_task(name).templates] + list(W.TASKS["toy_shapes"])
        + list(W.TASKS["toy_polygons"]))
    return sorted(set(re.findall(r"[a-z]+|[0-9]", text.lower())))


def write_world_tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer whose BPE merges spell exactly the world's words (characters for anything else)."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in _world_words():
        if len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merge = f"{left} {right}"
            left = left + right
            if merge not in merges:
                merges.append(merge)
                vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def _batches(n: int, batch: int, steps: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        yield order[pos : pos + batch]
        pos += batch


def pretrain_clip(world: Path, out: Path, steps: int = 500, batch: int = 128, lr: float = 1e-3, seed: int = 0,
                  echo: Any = print) -> dict[str, Any]:
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
            echo(f"clip step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(out))
    return {"steps": steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.time() - start}


def _sd_parts(vocab_size: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                        projection_dim=64, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=16, sample_size=W.SIZE, mid_block_add_attention=False)
    unet = UNet2DConditionModel(sample_size=W.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=8)  # text attention at 8x8 latents only
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"text_encoder": text, "vae": vae, "unet": unet, "scheduler": scheduler}


def pretrain_sd(world: Path, out: Path, vae_steps: int = 250, unet_steps: int = 1200, batch: int = 48,
                seed: int = 0, echo: Any = print) -> dict[str, Any]:
    """Train the tiny text-to-image pipeline on the upstream; writes a diffusers folder at ``OUT``."""
    import torch
    import torch.nn.functional as F
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    start = time.time()
    images, captions = load_upstream(world)
    tok = write_world_tokenizer(out / "tokenizer")
    parts = _sd_parts(len(tok))
    vae, unet, text = parts["vae"], parts["unet"], parts["text_encoder"]
    pixels = images.float() / 127.5 - 1
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step, idx in enumerate(_batches(len(pixels), 32, vae_steps, seed), 1):
        post = vae.encode(pixels[idx]).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, pixels[idx]) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == vae_steps:
            echo(f"vae step {step}/{vae_steps} loss {float(loss):.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 512]).latent_dist.mean for i in range(0, len(pixels), 512)])
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    ids = tok(captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=32, return_tensors="pt").input_ids
    sched = parts["scheduler"]
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=unet_steps, pct_start=0.05)
    losses = []
    for step, idx in enumerate(_batches(len(latents), batch, unet_steps, seed + 1), 1):
        x0 = latents[idx]
        cond = ids[idx].clone()
        drop = torch.rand(len(idx)) < 0.1
        cond[drop] = empty
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),))
        pred = unet(sched.add_noise(x0, noise, t), t, text(cond)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == unet_steps:
            echo(f"unet step {step}/{unet_steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return {"vae_steps": vae_steps, "unet_steps": unet_steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "vae_scaling_factor": scale, "seconds": time.time() - start}


def pretrain(world: Path, out: Path = WEIGHTS, seed: int = 0, quick: bool = False, echo: Any = print) -> dict[str, Any]:
    """Reproduce the shipped weights from the world (``quick``: a few steps each, for tests)."""
    out = Path(out)
    kw_clip = {"steps": 5, "batch": 32} if quick else {}
    kw_sd = {"vae_steps": 3, "unet_steps": 3, "batch": 16} if quick else {}
    stats = {"clip": pretrain_clip(world, out / CLIP_FILE, seed=seed, echo=echo, **kw_clip),
             "sd": pretrain_sd(world, out / SD_FOLDER, seed=seed, echo=echo, **kw_sd)}
    (out / "pretrain_stats.json").write_text(json.dumps(stats, indent=1))
    return stats

