"""A procedural, deterministic stand-in for LAION and for the target benchmarks.

The **upstream** is an image-text collection of small images (32 px) of many object kinds
(shapes, regular polygons, patterns) in many colours, sizes and positions on varied
backgrounds, with web-like captions: synonyms, filler words, shuffled word order, captions
that do not describe the image, and images with two objects. The **benchmarks** (``toy_shapes``,
and the fine-grained ``toy_polygons`` whose classes differ only in their number of sides) are
drawn from a related but different distribution: centred, larger objects on a plain pale
background in a softer palette. A few benchmark test images are planted in the upstream as
near-copies (re-encoded, slightly brighter) so decontamination has something real to find.

Every image is a pure function of (seed, index): the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

SIZE = 32
CANVAS = 96  # drawn large, then downsampled: anti-aliased edges

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent", "arrow", "hexagon"]
POLYGONS = ["triangle", "square", "pentagon", "hexagon", "heptagon", "octagon"]
PATTERNS = ["stripes", "dots", "checkerboard", "zigzag"]
KINDS = sorted(set(SHAPES) | set(POLYGONS)) + PATTERNS
SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8}

SYNONYMS = {
    "circle": ["circle", "round disc", "disk", "circle shape"], "square": ["square", "box", "square tile"],
    "triangle": ["triangle", "triangular shape"], "star": ["star", "five-pointed star", "star shape"],
    "cross": ["cross", "plus sign"], "ring": ["ring", "donut shape", "hoop"], "diamond": ["diamond", "rhombus"],
    "crescent": ["crescent", "moon shape", "crescent moon"], "arrow": ["arrow", "arrow sign", "pointer"],
    "hexagon": ["hexagon", "six-sided shape"], "pentagon": ["pentagon", "five-sided shape"],
    "heptagon": ["heptagon", "seven-sided shape"], "octagon": ["octagon", "eight-sided shape", "stop-sign shape"],
    "stripes": ["stripes", "striped pattern"], "dots": ["polka dots", "dotted pattern"],
    "checkerboard": ["checkerboard", "checkered pattern"], "zigzag": ["zigzag", "chevron pattern"],
}
UPSTREAM_COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
    "orange": (250, 140, 10), "purple": (140, 40, 180), "pink": (250, 110, 180), "brown": (120, 70, 30),
    "black": (15, 15, 15), "white": (245, 245, 245), "grey": (128, 128, 128), "cyan": (20, 200, 220),
}
BENCH_COLOURS = {"red": (200, 80, 80), "green": (80, 160, 90), "blue": (80, 100, 200), "orange": (220, 150, 70),
                 "purple": (150, 90, 180), "teal": (60, 150, 150)}
BACKGROUNDS = ["plain", "gradient", "noise", "stripes", "two-tone"]
FILLER = ["photo", "image", "stock", "png", "clipart", "hd", "vector", "icon", "free", "download", "sticker",
          "wallpaper", "design", "logo", "cheap", "sale", "new", "2019", "best"]
UNRELATED = ["untitled", "IMG_{n}.jpg", "my holiday {n}", "product photo {n}", "screenshot {n}", "banner {n}",
             "home decor idea {n}", "click here", "cover art {n}"]


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the toy world; the defaults are what the demo and the shipped models use."""

    seed: int = 0
    upstream: int = 12000
    bench_train: int = 40  # per class
    bench_val: int = 20
    bench_test: int = 40
    planted_per_task: int = 8
    maxcount: int = 2000


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


def _draw_kind(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, rot: float,
               colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    if kind in ("triangle", "pentagon", "hexagon", "heptagon", "octagon") or (kind == "square" and rot != 0.0):
        draw.polygon(_polygon(cx, cy, r, SIDES[kind], rot), fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=colour)
    elif kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.35)))
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)], fill=colour)
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=colour)
    elif kind == "cross":
        w = r * 0.33
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
    elif kind == "crescent":  # outer arc, then the arc of an offset circle through the same two tips
        outer = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(math.pi / 3, 5 * math.pi / 3, 16)]
        inner = [(cx + 0.5 * r + 0.866 * r * math.cos(t), cy + 0.866 * r * math.sin(t))
                 for t in np.linspace(3 * math.pi / 2, math.pi / 2, 16)]
        draw.polygon(outer + inner, fill=colour)
    elif kind == "arrow":
        pts = [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts], fill=colour)
    elif kind == "stripes":
        step = int(rng.integers(8, 16))
        for x in range(0, CANVAS, step):
            draw.rectangle([x, 0, x + step // 2, CANVAS], fill=colour)
    elif kind == "dots":
        step = int(rng.integers(12, 20))
        for x in range(step // 2, CANVAS, step):
            for y in range(step // 2, CANVAS, step):
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    elif kind == "checkerboard":
        step = int(rng.integers(10, 20))
        for i, x in enumerate(range(0, CANVAS, step)):
            for j, y in enumerate(range(0, CANVAS, step)):
                if (i + j) % 2 == 0:
                    draw.rectangle([x, y, x + step, y + step], fill=colour)
    elif kind == "zigzag":
        step = int(rng.integers(10, 18))
        for y in range(0, CANVAS, step * 2):
            pts = [(x, y + (step if (x // step) % 2 else 0)) for x in range(0, CANVAS + step, step)]
            draw.line(pts, fill=colour, width=4)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _background(rng: np.random.Generator, kind: str, colour: tuple[int, int, int]) -> Image.Image:
    c = np.array(colour, dtype=np.float32)
    if kind == "plain":
        arr = np.broadcast_to(c, (CANVAS, CANVAS, 3)).copy()
    elif kind == "gradient":
        other = rng.integers(0, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, CANVAS, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(c * (1 - t) + other * t, (CANVAS, CANVAS, 3)).copy()
    elif kind == "noise":
        arr = c + rng.normal(0, 40, (CANVAS, CANVAS, 3)).astype(np.float32)
    elif kind == "stripes":
        arr = np.broadcast_to(c, (CANVAS, CANVAS, 3)).copy()
        arr[:, :: int(rng.integers(6, 14))] *= 0.6
    else:  # two-tone
        arr = np.broadcast_to(c, (CANVAS, CANVAS, 3)).copy()
        arr[CANVAS // 2 :] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render(objects: list[dict[str, Any]], background: str, bg_colour: tuple[int, int, int],
           rng: np.random.Generator) -> Image.Image:
    """Draw objects (kind, colour, centre, radius, rotation in canvas pixels) on a background; 32 px RGB."""
    image = _background(rng, background, bg_colour)
    draw = ImageDraw.Draw(image)
    for o in objects:
        _draw_kind(draw, o["kind"], o["cx"], o["cy"], o["r"], o["rot"], o["colour"], rng)
    return image.reduce(CANVAS // SIZE)  # box filter: anti-aliased and fast


def _caption(rng: np.random.Generator, objects: list[dict[str, Any]], background: str) -> str:
    """A web-like caption: synonyms, filler words, sometimes shuffled, sometimes unrelated."""
    roll = rng.random()
    if roll < 0.08:
        return str(rng.choice(UNRELATED)).format(n=int(rng.integers(100, 9999)))
    words = []
    for o in objects:
        name = str(rng.choice(SYNONYMS[o["kind"]]))
        size = "" if rng.random() < 0.6 else ("small " if o["r"] < 22 else "big ")
        words.append(f"{size}{o['colour_name']} {name}" if rng.random() < 0.8 else name)
    core = " and ".join(words)
    if rng.random() < 0.3:
        core = f"{core} on {background} background"
    fill = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(0, 4)), replace=False)]
    tokens = fill + [core] if rng.random() < 0.5 else [core] + fill
    if rng.random() < 0.15:
        rng.shuffle(tokens)
    return " ".join(tokens)


def upstream_sample(seed: int, index: int) -> tuple[bytes, str, dict[str, Any]]:
    """Upstream image ``index``: JPEG bytes, caption and its ground truth (kinds, colours)."""
    rng = np.random.default_rng([seed, 1, index])
    n_objects = 2 if rng.random() < 0.1 else 1
    objects = []
    for _ in range(n_objects):
        kind = str(rng.choice(KINDS))
        colour_name = str(rng.choice(list(UPSTREAM_COLOURS)))
        r = float(rng.uniform(14, 34) if n_objects == 1 else rng.uniform(12, 22))
        objects.append({"kind": kind, "colour_name": colour_name, "colour": UPSTREAM_COLOURS[colour_name],
                        "cx": float(rng.uniform(r, CANVAS - r)), "cy": float(rng.uniform(r, CANVAS - r)), "r": r,
                        "rot": float(rng.uniform(0, 2 * math.pi)) if rng.random() < 0.7 else 0.0})
    background = str(rng.choice(BACKGROUNDS))
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = render(objects, background, bg, rng)
    caption = _caption(rng, objects, background)
    truth = {"kinds": [o["kind"] for o in objects], "colours": [o["colour_name"] for o in objects],
             "background": background}
    return _jpeg(image), caption, truth


def bench_sample(seed: int, task: str, classes: list[str], split: str, index: int) -> tuple[bytes, int]:
    """Benchmark image ``index`` of ``split``: centred, large, plain pale background, soft palette."""
    rng = np.random.default_rng([seed, 2, ["train", "val", "test"].index(split), sum(map(ord, task)), index])
    label = index % len(classes)
    kind = classes[label]
    colour_name = str(rng.choice(list(BENCH_COLOURS)))
    r = float(rng.uniform(28, 38))
    jitter = rng.uniform(-6, 6, 2)
    rot = float(rng.uniform(0, 2 * math.pi)) if task == "toy_polygons" else 0.0
    obj = {"kind": kind, "colour_name": colour_name, "colour": BENCH_COLOURS[colour_name],
           "cx": CANVAS / 2 + float(jitter[0]), "cy": CANVAS / 2 + float(jitter[1]), "r": r, "rot": rot}
    pale = tuple(int(v) for v in 225 + rng.integers(0, 30, 3))
    return _jpeg(render([obj], "plain", pale, rng)), label


def planted_copy(jpeg: bytes) -> bytes:
    """A near-copy of a benchmark image as a web page would hold it: brighter, re-encoded."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return _jpeg(ImageEnhance.Brightness(img.convert("RGB")).enhance(1.06), quality=80)


TASKS = {"toy_shapes": SHAPES, "toy_polygons": POLYGONS}
LAYOUT = 2  # 2: eval splits in CLIP_benchmark's layout (SPLIT/0.tar, SPLIT/nshards.txt, templates file)


def build_world(out: str | Path, cfg: WorldConfig = WorldConfig()) -> dict[str, Any]:
    """Write the upstream (shards, image files, LAION-like parquet) and each toy task's eval splits.

    Layout: ``OUT/upstream/shards/``, ``OUT/upstream/files/NNN/KEY.jpg`` (what the parquet's
    ``file://`` URLs point at), ``OUT/upstream/metadata.parquet`` (url, caption, key),
    ``OUT/eval/TASK/{train,val,test}/`` (CLIP_benchmark's layout) and ``OUT/world.json``
    (config, counts, the planted copies). Resumable: a finished world is not rewritten.
    """
    import pandas as pd

    from synthimg.atomic import atomic_write
    from synthimg.data.shards import ShardWriter, finalize, sample_key
    from synthimg.tasks import get_task

    out = Path(out)
    info_path = out / "world.json"
    if info_path.is_file():
        done = json.loads(info_path.read_text())
        if done.get("config") == cfg.__dict__ and done.get("layout") == LAYOUT:
            return done
    splits = {"train": cfg.bench_train, "val": cfg.bench_val, "test": cfg.bench_test}
    planted: list[dict[str, Any]] = []
    for task, classes in TASKS.items():
        for split, per_class in splits.items():
            split_dir = out / "eval" / task / split
            for old in split_dir.glob("*.tar") if split_dir.is_dir() else []:  # an earlier layout's shards
                old.unlink()
            with ShardWriter(split_dir, maxcount=cfg.maxcount, names=lambda i: f"{i}.tar") as w:
                for i in range(per_class * len(classes)):
                    jpeg, label = bench_sample(cfg.seed, task, classes, split, i)
                    w.write({"__key__": sample_key(i), "jpg": jpeg, "cls": label, "txt": classes[label],
                             "json": {"source": "upstream", "class_id": label, "class_name": classes[label]}})
                    if split == "test" and i < cfg.planted_per_task:
                        planted.append({"task": task, "test_key": sample_key(i), "class_name": classes[label],
                                        "jpeg": planted_copy(jpeg)})
            finalize(split_dir, classes)
            atomic_write(split_dir / "nshards.txt", f"{len(list(split_dir.glob('*.tar')))}\n")
        root = out / "eval" / task
        atomic_write(root / "classnames.txt", "\n".join(classes) + "\n")
        atomic_write(root / "zeroshot_classification_templates.txt", "\n".join(get_task(task).templates) + "\n")
    up = out / "upstream"
    rows = []
    total = cfg.upstream + len(planted)
    stride = max(1, cfg.upstream // max(1, len(planted)))
    plant_at = {p * stride + stride // 2: planted[p] for p in range(len(planted))}
    with ShardWriter(up / "shards", maxcount=cfg.maxcount, prefix="upstream") as w:
        n = 0
        for i in range(cfg.upstream):
            items = [upstream_sample(cfg.seed, i)]
            if i in plant_at:
                p = plant_at[i]
                items.append((p["jpeg"], f"{p['class_name']} photo", {"planted_from": f"{p['task']}/test/{p['test_key']}"}))
            for jpeg, caption, truth in items:
                key = sample_key(n)
                path = up / "files" / key[:6] / f"{key}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg)
                url = path.resolve().as_uri()
                w.write({"__key__": key, "jpg": jpeg, "cls": 0, "txt": caption,
                         "json": {"source": "upstream", "class_id": 0, "class_name": "upstream", "url": url,
                                  "caption": caption, **truth}})
                rows.append({"url": url, "caption": caption, "key": key, "planted_from": truth.get("planted_from")})
                n += 1
    finalize(up / "shards", ["upstream"])
    pd.DataFrame(rows).to_parquet(up / "metadata.parquet", index=False)
    info = {"config": cfg.__dict__, "layout": LAYOUT, "upstream": total, "tasks": {t: len(c) for t, c in TASKS.items()},
            "planted": [r for r in rows if r["planted_from"]]}
    atomic_write(info_path, json.dumps(info, indent=1))
    return info
