"""Training throughput: synthimg's trainer on shards vs a plain PyTorch loop over an ImageFolder.

    python scripts/bench/train.py                        # CPU: tiny model, 64 px images
    python scripts/bench/train.py --model ViT-B-16 --images 4096 --size 256 --batch 256 --precision amp_bf16  # GPU

Same model, batch, optimizer and augmentation (RandomResizedCrop to the model's input) on the
same images; the baseline reads JPEG files with torchvision's ImageFolder and a DataLoader.
Prints images/s for both and the ratio. Random weights: nothing is downloaded.
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


def ours(root: Path, args: argparse.Namespace, steps: int) -> float:
    import json

    from synthimg.config import load_config
    from synthimg.train.engine import train

    cfg = load_config(overrides=[
        "task=cifar10", f"train.data=[{root / 'shards'}]", f"train.model={args.model}", "train.pretrained=null",
        "train.epochs=1", f"train.steps_per_epoch={steps + 1}", f"train.batch_size={args.batch}",
        f"train.workers={args.workers}", f"train.precision={args.precision}", f"train.logs={root / 'runs'}",
        "train.name=bench", "train.log_every=1000000",
    ])
    run = train(cfg)
    stats = json.loads((run / "train_stats.json").read_text())
    return stats["steady_samples_per_second"]  # the first step (start-up) excluded, as for the baseline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="synthimg-tiny-vit-224")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, args.images, args.size)
        base = plain_loop(root, args, args.steps)
        ours_rate = ours(root, args, args.steps)
    print(f"{args.model} batch {args.batch}, {args.precision}, {args.workers} workers, {args.steps} steps: "
          f"plain ImageFolder loop {base:,.1f} img/s | synthimg trainer {ours_rate:,.1f} img/s | ratio {ours_rate / base:.2f}")


if __name__ == "__main__":
    main()
