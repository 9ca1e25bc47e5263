"""Generation throughput: the plain diffusers pipeline loop vs synthimg's engine, same run.

    python scripts/bench/generate.py                                   # CPU: tiny size
    python scripts/bench/generate.py --size 512 --steps 50 --batch 32 --images 256 --dtype fp16   # GPU, the paper's settings

The SD 1.5 architecture (UNet 320-640-1280-1280, cross-attention 768; VAE 128-256-512-512;
CLIP ViT-L/14 text encoder; OpenAI CLIP's tokenizer) is built from its published config
with random weights: nothing is downloaded. DDIM, CFG 2.0, eta 0.

Baseline: ``pipe(prompts, ...)`` per batch with the pipeline as loaded (SDPA attention is
diffusers' default), images resized and JPEG-encoded in the loop. Ours: ``Engine`` +
``generate`` (per-image generators, channels_last, fused QKV, optional compile, JPEG in a
background thread, atomic shards). Prints images/s for both and the ratio.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    import diffusers
    import torch
    from PIL import Image

    from synthimg.config import GenerateConfig
    from synthimg.dist import device as default_device
    from synthimg.synthetic.generate import Item, generate
    from synthimg.tasks import get_task

    device = default_device()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype, torch.float32)
    task = get_task("fgvc_aircraft")
    prompts = [f"a photo of a {task.classnames[i % 100]} aircraft over the sea" for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_sd15(Path(tmp) / "sd15")
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe(prompts[: args.batch], num_inference_steps=1, height=args.size, width=args.size)  # warm-up
        start = time.perf_counter()
        for b in range(0, args.images, args.batch):
            out = pipe(prompts[b : b + args.batch], num_inference_steps=args.steps, guidance_scale=2.0, eta=0.0,
                       height=args.size, width=args.size)
            for im in out.images:
                im.resize((256, 256), Image.Resampling.LANCZOS).save(io.BytesIO(), format="JPEG", quality=95)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        plain = args.images / (time.perf_counter() - start)
        del pipe

        cfg = GenerateConfig(model_id=str(model), steps=args.steps, height=args.size, width=args.size, batch_size=args.batch,
                             images_per_shard=args.images, dtype=args.dtype, compile=args.compile)
        items = [Item(i, i % 100, task.classnames[i % 100], i, 0, p, {}) for i, p in enumerate(prompts)]
        generate(items[: args.batch], task, cfg.model_copy(update={"steps": 1}), Path(tmp) / "warm", progress=False)
        stats = generate(items, task, cfg, Path(tmp) / "ours", progress=False)
        ours = stats["images_per_sec"]
    print(f"SD 1.5 architecture (random weights), {args.size}px, DDIM {args.steps} steps, CFG 2.0, batch {args.batch}, "
          f"{args.dtype}, {device}: plain pipeline loop {plain:.3f} img/s | synthimg engine {ours:.3f} img/s | "
          f"ratio {ours / plain:.2f}")


if __name__ == "__main__":
    main()
