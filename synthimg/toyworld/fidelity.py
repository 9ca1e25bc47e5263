"""``synthimg toyworld fidelity``: does the shipped toy generator draw what it is asked for?

It renders ``per_class`` images of each ``toy_shapes`` class with the shipped pipeline (DDIM
at the demo's step count, CFG 2.0, the task's zero-shot prompts in turn) and classifies them with the shipped toy
CLIP's zero-shot head. The same classifier on as many real upstream images of those classes
(single-object images, drawn by the world's own generator) gives ``real_accuracy``, the
ceiling the generator is held to.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError
from synthimg.toyworld import world as W


def real_images(task: Any, per_class: int, seed: int = 0) -> tuple[list[Any], list[int]]:
    """The first ``per_class`` single-object upstream images of each class (the world's seed)."""
    from PIL import Image

    images: list[Any] = []
    labels: list[int] = []
    found = {c: 0 for c in range(task.num_classes)}
    index = 0
    while min(found.values()) < per_class and index < 200_000:
        jpeg, _, truth = W.upstream_sample(seed, index)
        index += 1
        if len(truth["kinds"]) == 1 and truth["kinds"][0] in task.classnames:
            c = task.classnames.index(truth["kinds"][0])
            if found[c] < per_class:
                found[c] += 1
                with Image.open(io.BytesIO(jpeg)) as img:
                    images.append(img.convert("RGB"))
                labels.append(c)
    if min(found.values()) < per_class:
        short = ", ".join(f"{task.classnames[c]} {n}" for c, n in found.items() if n < per_class)
        raise SynthimgError(f"the upstream has fewer than {per_class} single-object images of: {short}")
    return images, labels


def demo_sampling() -> tuple[int, float]:
    """(DDIM steps, CFG scale) of the demo's synthetic arm, read from the demo's own study file."""
    import yaml

    gen = yaml.safe_load((Path(__file__).with_name("demo.yaml")).read_text())["base"]["generate"]
    return int(gen["steps"]), float(gen["cfg"])


def generated_images(pipe: Any, task: Any, per_class: int, steps: int, cfg: float, seed: int = 0,
                     batch: int = 100) -> tuple[list[Any], list[int]]:
    import torch

    prompts, labels = [], []
    for c in range(task.num_classes):
        options = task.prompts(c)
        for i in range(per_class):
            prompts.append(options[i % len(options)])
            labels.append(c)
    images: list[Any] = []
    for b in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(seed * 100_003 + b + j) for j in range(len(prompts[b: b + batch]))]
        out = pipe(prompts[b: b + batch], num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                   height=W.SIZE, width=W.SIZE, output_type="pil")
        images += out.images
    return images, labels


def load_judge(clip_file: Path) -> tuple[Any, Any, Any]:
    """The toy CLIP, its zero-shot head over ``toy_shapes`` and the task."""
    from synthimg.models.clip import create_clip, zeroshot_head
    from synthimg.tasks import get_task

    task = get_task("toy_shapes")
    bundle = create_clip("synthimg-toy-clip", str(clip_file))
    bundle.model.eval()
    head = zeroshot_head(bundle.model, bundle.tokenizer, [task.prompts(c) for c in range(task.num_classes)])
    return bundle, head, task


def accuracy(judge: tuple[Any, Any, Any], images: list[Any], labels: list[int]) -> tuple[float, list[float]]:
    """Overall and per-class zero-shot accuracy of the judge on ``images``."""
    import torch
    import torch.nn.functional as F

    bundle, head, task = judge
    with torch.no_grad():
        x = torch.stack([bundle.preprocess_val(im) for im in images])
        pred = head(F.normalize(bundle.model.encode_image(x), dim=-1)).argmax(-1)
    truth = torch.tensor(labels)
    hits = pred == truth
    per = [float(hits[truth == c].float().mean()) for c in range(task.num_classes)]
    return float(hits.float().mean()), per


def load_pipeline(folder: Path) -> Any:
    """The toy pipeline in fp32 with a DDIM scheduler and no progress bars."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)  # shipped in fp16
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe: Any, judge: tuple[Any, Any, Any], per_class: int = 20, steps: int = 50, cfg: float = 2.0,
            sheet: Path | None = None) -> dict[str, Any]:
    """Generated-image accuracy of the judge next to its accuracy on as many real upstream images."""
    from diffusers import DDIMScheduler

    task = judge[2]
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    fake, fake_labels = generated_images(pipe, task, per_class, steps, cfg)
    real, real_labels = real_images(task, per_class)
    acc, per = accuracy(judge, fake, fake_labels)
    real_acc, real_per = accuracy(judge, real, real_labels)
    if sheet is not None:
        contact_sheet(fake, fake_labels, real, real_labels, task.classnames, sheet)
    return {"accuracy": round(acc, 4), "chance": round(1 / task.num_classes, 4), "real_accuracy": round(real_acc, 4),
            "per_class": {n: round(a, 3) for n, a in zip(task.classnames, per)},
            "per_class_real": {n: round(a, 3) for n, a in zip(task.classnames, real_per)},
            "images_per_class": per_class, "steps": steps, "cfg": cfg, "scheduler": "ddim"}


def fidelity(weights: Path | None = None, per_class: int = 20, steps: int | None = None, cfg: float = 2.0,
             sheet: Path | None = None) -> dict[str, Any]:
    """Zero-shot accuracy of the toy CLIP on generated and on real images of ``toy_shapes``.

    ``steps`` defaults to the demo's own DDIM steps, so the figure describes the images the
    demo's synthetic arm trains on.
    """
    from synthimg.toyworld.pretrain import CLIP_FILE, SD_FOLDER, WEIGHTS

    weights = Path(weights or WEIGHTS)
    steps = steps or demo_sampling()[0]
    return measure(load_pipeline(weights / SD_FOLDER), load_judge(weights / CLIP_FILE), per_class, steps, cfg, sheet)


def contact_sheet(fake: list[Any], fake_labels: list[int], real: list[Any], real_labels: list[int],
                  classnames: list[str], path: Path, per_class: int = 4, thumb: int = 64) -> Path:
    """One row per class: four generated images, a gap, four real upstream images; class names on the left."""
    from PIL import Image, ImageDraw

    label_w, gap, head = 90, 16, 18
    width = label_w + thumb * per_class * 2 + gap
    sheet = Image.new("RGB", (width, head + thumb * len(classnames)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 3), "generated (shipped toy SD)", fill="black")
    draw.text((label_w + thumb * per_class + gap, 3), "real (upstream)", fill="black")
    for c, name in enumerate(classnames):
        y = head + c * thumb
        draw.text((4, y + thumb // 2 - 6), name, fill="black")
        for j, img in enumerate([im for im, lab in zip(fake, fake_labels) if lab == c][:per_class]):
            sheet.paste(img.resize((thumb, thumb), Image.Resampling.NEAREST), (label_w + j * thumb, y))
        for j, img in enumerate([im for im, lab in zip(real, real_labels) if lab == c][:per_class]):
            sheet.paste(img.resize((thumb, thumb), Image.Resampling.NEAREST),
                        (label_w + thumb * per_class + gap + j * thumb, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
