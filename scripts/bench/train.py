"""Training throughput: synthimg's trainer on shards vs a plain PyTorch loop over an ImageFolder.

    python scripts/bench/train.py                        # CPU: tiny model, 64 px images
    python scripts/bench/train.py --model ViT-B-16 --images 4096 --size 256 --batch 256 --precision amp_bf16  # GPU
    python scripts/bench/train.py --gpu-preset       # one GPU: ViT-B/16, 256 px JPEG -> RRC 224, batch 256, bf16

Same model, batch, optimizer and augmentation (RandomResizedCrop to the model's input) on the
same images; the baseline reads JPEG files with torchvision's ImageFolder and a DataLoader.
Prints images/s for both and the ratio. Random weights: nothing is downloaded.

Also measured in the same run: the same steps on synthetic in-memory tensors (the step
without a loader: the loader is not the bottleneck when ours is within 5% of it), the
trainer with each lever switched on (``train.compile``, ``train.fused_adamw``), and the
loader alone on one worker (decode + RandomResizedCrop images/s per core). The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def make_data(root: Path, n: int, size: int) -> None:
    from synthimg.data.shards import ShardWriter, finalize, sample_key

    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards", maxcount=max(64, n // 16)) as writer:
        for i in range(n):
            c = i % 10
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            (root / "folder" / str(c)).mkdir(parents=True, exist_ok=True)
            (root / "folder" / str(c) / f"{i}.jpg").write_bytes(buf.getvalue())
            writer.write({"__key__": sample_key(i), "jpg": buf.getvalue(), "cls": c, "txt": "x",
                          "json": {"source": "synthetic", "class_id": c, "class_name": str(c)}})
    finalize(root / "shards", [str(c) for c in range(10)])


def plain_loop(root: Path, args: argparse.Namespace, steps: int) -> float:
    import torch
    import torchvision

    from synthimg.config import TrainConfig
    from synthimg.dist import device as default_device
    from synthimg.models.learners import build_learner
    from synthimg.runtime import autocast
    from synthimg.tasks import get_task

    device = default_device()
    cfg = TrainConfig(model=args.model, pretrained=None, precision=args.precision)
    learner = build_learner(cfg, get_task("cifar10"), device)
    model = learner.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    data = torchvision.datasets.ImageFolder(str(root / "folder"), transform=learner.transform_train)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, persistent_workers=args.workers > 0)
    done, start = 0, None
    while done < steps + 1:
        for images, labels in loader:
            if done == 1:
                start = time.perf_counter()  # the first step pays for start-up
            with autocast(device) if args.precision.startswith("amp") else _null():
                loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            if done == steps + 1:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * args.batch / (time.perf_counter() - start)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def ours(root: Path, args: argparse.Namespace, steps: int, extra: list[str] | None = None) -> float:
    import json

    from synthimg.config import load_config
    from synthimg.train.engine import train

    cfg = load_config(overrides=[
        "task=cifar10", f"train.data=[{root / 'shards'}]", f"train.model={args.model}", "train.pretrained=null",
        "train.epochs=1", f"train.steps_per_epoch={steps + 1}", f"train.batch_size={args.batch}",
        f"train.workers={args.workers}", f"train.precision={args.precision}", f"train.logs={root / 'runs'}",
        f"train.name=bench{len(list((root / 'runs').glob('bench*'))) if (root / 'runs').is_dir() else 0}",
        "train.log_every=1000000", *(extra or []),
    ])
    run = train(cfg)
    stats = json.loads((run / "train_stats.json").read_text())
    return stats["steady_samples_per_second"]  # the first step (start-up) excluded, as for the baseline


def synthetic_steps(args: argparse.Namespace, steps: int) -> float:
    """Images/s of the same model, optimiser and batch on tensors already on the device (no loader)."""
    import torch

    from synthimg.config import TrainConfig
    from synthimg.dist import device as default_device
    from synthimg.models.learners import build_learner
    from synthimg.runtime import autocast
    from synthimg.tasks import get_task

    device = default_device()
    cfg = TrainConfig(model=args.model, pretrained=None, precision=args.precision)
    learner = build_learner(cfg, get_task("cifar10"), device)
    model = learner.model.train()
    fused = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, **fused)
    side = learner.transform_train.transforms[0].size if hasattr(learner.transform_train, "transforms") else 224
    side = side[0] if isinstance(side, (tuple, list)) else side
    images = torch.randn(args.batch, 3, side, side, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    for step in range(steps + 1):
        if step == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device) if args.precision.startswith("amp") else _null():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * args.batch / (time.perf_counter() - start)


def loader_per_core(root: Path, args: argparse.Namespace, batches: int = 8) -> float:
    """Decode + RandomResizedCrop images/s of the shard pipeline on one worker process (one core)."""
    import torch

    from synthimg.config import TrainConfig
    from synthimg.data.loader import shard_pipeline
    from synthimg.models.learners import build_learner
    from synthimg.tasks import get_task

    learner = build_learner(TrainConfig(model=args.model, pretrained=None), get_task("cifar10"), "cpu")
    data = shard_pipeline([str(p) for p in sorted((root / "shards").glob("*.tar"))], transform=learner.transform_train)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, num_workers=1, collate_fn=lambda b: len(b))
    it = iter(loader)
    next(it)  # start-up
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += next(it)
        except StopIteration:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="synthimg-tiny-vit-224")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--levers", action="store_true", help="also run the trainer with compile and fused AdamW")
    parser.add_argument("--gpu-preset", action="store_true",
                        help="one GPU: ViT-B-16, 4096 JPEGs of 256 px, batch 256, amp_bf16, all cores, levers")
    args = parser.parse_args()
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device as device_name
    from _common import summary

    from synthimg.dist import device as default_device

    dev = default_device()
    if args.gpu_preset:
        if not dev.startswith("cuda"):
            print("--gpu-preset needs a CUDA device", file=sys.stderr)
            raise SystemExit(2)
        args.model, args.images, args.size, args.batch, args.steps = "ViT-B-16", 4096, 256, 256, 40
        args.precision, args.workers, args.levers = "amp_bf16", min(16, len(os.sched_getaffinity(0))), True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, args.images, args.size)
        base = plain_loop(root, args, args.steps)
        ours_rate = ours(root, args, args.steps)
        in_memory = synthetic_steps(args, args.steps)
        levers = {}
        if args.levers:
            options = [("fused_adamw off", ["train.fused_adamw=false"])]
            if dev.startswith("cuda"):  # inductor on a CPU smoke run takes longer than the run
                options.insert(0, ("compile", ["train.compile=true"]))
            for name, extra in options:
                levers[name] = ours(root, args, args.steps, extra)
        per_core = loader_per_core(root, args)
    print(f"{args.model} batch {args.batch}, {args.precision}, {args.workers} workers, {args.steps} steps, "
          f"{args.size}px JPEG, {device_name(dev)}:")
    print(f"  plain ImageFolder loop {base:,.1f} img/s | synthimg trainer {ours_rate:,.1f} img/s "
          f"({ours_rate / base:.2f}x) | in-memory tensors {in_memory:,.1f} img/s (ours at {ours_rate / in_memory:.0%})")
    for name, rate in levers.items():
        print(f"  trainer with {name}: {rate:,.1f} img/s")
    print(f"  loader alone, one worker: {per_core:,.1f} img/s per core")
    summary("train", ours_rate, base, "img/s", device_name(dev), in_memory=round(in_memory, 2),
            ours_vs_in_memory=round(ours_rate / in_memory, 3), levers={k: round(v, 2) for k, v in levers.items()},
            loader_img_s_per_core=round(per_core, 1), model=args.model, batch=args.batch, precision=args.precision)


if __name__ == "__main__":
    main()
