"""Generation throughput: the plain diffusers pipeline loop vs synthimg's engine, same run.

    python scripts/bench/generate.py                     # CPU: tiny size, a smoke run
    python scripts/bench/generate.py --ablation          # CPU: every lever on and off, tiny size
    python scripts/bench/generate.py --gpu-preset        # one GPU: 512 px, DDIM 50, CFG 2, fp16, batch 32, ablation

The SD 1.5 architecture (UNet 320-640-1280-1280, cross-attention 768; VAE 128-256-512-512;
CLIP ViT-L/14 text encoder; OpenAI CLIP's tokenizer) is built from its published config
with random weights: nothing is downloaded. DDIM, CFG 2.0, eta 0.

Baseline: ``pipe(prompts, ...)`` per batch with the pipeline as loaded (SDPA attention is
diffusers' default), images resized and JPEG-encoded in the loop. Ours: ``Engine`` +
``generate`` (per-image generators, channels_last, fused QKV, optional compile, JPEG in a
background thread, atomic shards). Prints images/s for both and the ratio.

``--ablation`` renders with the engine once per lever setting, each a ``GenerateConfig``
switch: eager attention with no levers, then SDPA, channels_last, fused QKV, torch.compile
and compile with CUDA graphs (``reduce-overhead``), added one at a time. The quality guard:
the first batch of each setting against the plain pipeline's at the same latents, as the mean
absolute difference in 8-bit pixels (``mad``, 0-255) and the share of pixels that differ by
more than 8 levels; no lever skips or caches steps. The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def build_sd15(folder: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from synthimg.models.clip_bpe import write_clip_tokenizer_files

    torch.manual_seed(0)
    tok_dir = write_clip_tokenizer_files(folder / "_tokenizer")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=768))
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


LEVERS = [  # cumulative, in the order the ablation table reads
    ("engine, eager attention, no levers", {"attention": "eager", "channels_last": False, "fuse_qkv": False}),
    ("+ SDPA attention", {"attention": "sdpa"}),
    ("+ channels_last", {"channels_last": True}),
    ("+ fused QKV", {"fuse_qkv": True}),
    ("+ torch.compile", {"compile": True}),
    ("+ CUDA graphs (compile reduce-overhead)", {"compile_mode": "reduce-overhead"}),
]


def pixels(images: list) -> "np.ndarray":  # noqa: F821
    import numpy as np

    return np.stack([np.asarray(im.convert("RGB"), dtype=np.int16) for im in images])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--compile", action="store_true", help="without --ablation: compile the engine's UNet")
    parser.add_argument("--ablation", action="store_true", help="one engine run per lever setting")
    parser.add_argument("--gpu-preset", action="store_true",
                        help="the paper's setting on one GPU: 512 px, DDIM 50, CFG 2, fp16, batch 32, 128 images, ablation")
    args = parser.parse_args()
    import diffusers
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device as device_name
    from _common import summary

    from synthimg.config import GenerateConfig
    from synthimg.dist import device as default_device
    from synthimg.synthetic.generate import Engine, Item, generate, image_seed
    from synthimg.tasks import get_task

    device = default_device()
    if args.gpu_preset:
        if not device.startswith("cuda"):
            print("--gpu-preset needs a CUDA device (use --ablation for the CPU smoke run)", file=sys.stderr)
            raise SystemExit(2)
        args.size, args.steps, args.batch, args.images, args.dtype, args.ablation = 512, 50, 32, 128, "fp16", True
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype, torch.float32) \
        if device.startswith("cuda") else torch.float32
    task = get_task("fgvc_aircraft")
    prompts = [f"a photo of a {task.classnames[i % 100]} aircraft over the sea" for i in range(args.images)]
    items = [Item(i, i % 100, task.classnames[i % 100], i, 0, p, {}) for i, p in enumerate(prompts)]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_sd15(Path(tmp) / "sd15")
        base = GenerateConfig(model_id=str(model), steps=args.steps, height=args.size, width=args.size,
                              batch_size=args.batch, images_per_shard=args.images, dtype=args.dtype,
                              compile=args.compile)
        # the plain loop, fed the engine's own latents so that the quality guard compares like with like
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        shape = (4, args.size // 8, args.size // 8)

        def latents(batch: list) -> "torch.Tensor":
            gens = [torch.Generator("cpu").manual_seed(image_seed(0, it.class_id, it.caption_index, it.image_index))
                    for it in batch]
            return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dtype)

        pipe(prompts[: args.batch], num_inference_steps=1, height=args.size, width=args.size)  # warm-up
        sync()
        start = time.perf_counter()
        reference = None
        for b in range(0, args.images, args.batch):
            out = pipe(prompts[b : b + args.batch], num_inference_steps=args.steps, guidance_scale=2.0, eta=0.0,
                       height=args.size, width=args.size, latents=latents(items[b : b + args.batch]))
            reference = out.images if reference is None else reference
            for im in out.images:
                im.resize((256, 256), Image.Resampling.LANCZOS).save(io.BytesIO(), format="JPEG", quality=95)
        sync()
        plain = args.images / (time.perf_counter() - start)
        del pipe
        print(f"SD 1.5 architecture (random weights), {args.size}px, DDIM {args.steps}, CFG 2.0, batch {args.batch}, "
              f"{args.dtype}, {device_name(device)}")
        print(f"  plain diffusers pipeline loop: {plain:.3f} img/s")
        settings = []
        if args.ablation:
            cfg = base.model_copy(update={"compile": False})
            for name, change in LEVERS:
                if ("compile" in change or "compile_mode" in change) and not device.startswith("cuda") \
                        and not args.compile:
                    continue  # compiling SD's UNet for a CPU smoke run takes longer than the run; --compile asks for it
                cfg = cfg.model_copy(update=change)
                settings.append((name, cfg))
        else:
            settings.append(("synthimg engine", base))
        rows = []
        for name, cfg in settings:
            generate(items[: args.batch], task, cfg.model_copy(update={"steps": 1}), Path(tmp) / "warm", progress=False)
            out_dir = Path(tmp) / f"ours-{len(rows)}"
            stats = generate(items, task, cfg, out_dir, progress=False)
            engine = Engine(cfg, device)  # the guard: the first batch, before JPEG
            diff = np.abs(pixels([im for im, _ in engine.render(items[: args.batch])]) - pixels(reference))
            del engine
            row = {"setting": name, "img_s": stats["images_per_sec"], "ratio": stats["images_per_sec"] / plain,
                   "mad": float(diff.mean()), "over_8": float((diff > 8).mean())}
            rows.append(row)
            print(f"  {name:42s} {row['img_s']:.3f} img/s  {row['ratio']:.2f}x  "
                  f"guard: mad {row['mad']:.2f}/255, {100 * row['over_8']:.2f}% of pixels off by > 8")
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    best = max(rows, key=lambda r: r["img_s"])
    summary("generate", best["img_s"], plain, "img/s", device_name(device), setting=best["setting"],
            mad=round(best["mad"], 3), size=args.size, steps=args.steps, batch=args.batch, dtype=args.dtype,
            ablation=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])


if __name__ == "__main__":
    main()
