"""Convert an ImageFolder (folders named by class name or class index) into shards.

Labels come from the task catalog, never from sorted folder names: a missing class folder
shifts nothing, and an unknown folder name is an error that lists it. The work is cut into
deterministic shards of ``maxcount`` files (key = the file's position in the sorted
listing), so a rerun after a crash skips completed shards and ends with the same keys and
bytes. Unreadable images are skipped, counted and named in ``from_folder_stats.json``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthimg.config import Config, ShardsConfig, save_resolved
from synthimg.data.manifest import fragment_path
from synthimg.data.shards import (
    finalize,
    sample_key,
    shard_name,
    write_shard,
)
from synthimg.errors import SynthimgError
from synthimg.tasks.spec import TaskSpec

# torchvision's ImageFolder extensions
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_NATIVE = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class FolderItem:
    path: Path
    class_id: int


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def map_class_folders(folder: Path, task: TaskSpec) -> dict[str, int]:
    """Folder name -> class index: a class index (``7``, ``007``) or a class name (case, ``_`` vs space ignored)."""
    by_name = {_normalise(c): i for i, c in enumerate(task.classnames)}
    mapping, unknown = {}, []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = entry.name
        if name.isdigit() and int(name) < task.num_classes:
            mapping[name] = int(name)
        elif _normalise(name) in by_name:
            mapping[name] = by_name[_normalise(name)]
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise SynthimgError(
            f"{len(unknown)} folder names of {folder} are neither {task.name} class names nor indices "
            f"0..{task.num_classes - 1}: {shown}"
        )
    if not mapping:
        raise SynthimgError(f"{folder} has no class folders")
    return mapping


def list_items(folder: Path, task: TaskSpec) -> tuple[list[FolderItem], list[str]]:
    """All image files in a deterministic order (class index, then relative path); also the non-image files."""
    items: list[FolderItem] = []
    other: list[str] = []
    for name, class_id in map_class_folders(folder, task).items():
        for root, _, files in os.walk(folder / name):
            for f in files:
                path = Path(root) / f
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(FolderItem(path, class_id))
                else:
                    other.append(str(path))
    items.sort(key=lambda it: (it.class_id, str(it.path.relative_to(folder))))
    return items, sorted(other)


def _encode(path: Path, cfg: ShardsConfig) -> tuple[str, bytes, tuple[int, int]]:
    """Read and fully decode an image; keep its bytes when already JPEG/PNG/WebP, else re-encode."""
    from PIL import Image

    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        ext = _NATIVE.get(img.format or "")
        size = img.size
        if ext is None:
            ext = cfg.reencode
            buf = io.BytesIO()
            rgb = img.convert("RGB")
            rgb.save(buf, format=_PIL_FORMAT[ext], quality=cfg.jpeg_quality)
            raw = buf.getvalue()
    return ext, raw, size


def _shard_samples(
    items: list[FolderItem], first_index: int, task: TaskSpec, cfg: ShardsConfig, skipped: list[dict[str, str]]
) -> Iterator[Any]:
    for offset, item in enumerate(items):
        key = sample_key(first_index + offset)
        meta: dict[str, Any] = {
            "source": cfg.source,
            "class_id": item.class_id,
            "class_name": task.classnames[item.class_id],
            "source_path": str(item.path),
        }
        stub = {"__key__": key, "json": meta}
        try:
            ext, data, (w, h) = _encode(item.path, cfg)
        except Exception as err:  # PIL raises many types for bad files; each is a counted skip
            msg = f"{type(err).__name__}: {err}".splitlines()[0]
            skipped.append({"key": key, "path": str(item.path), "error": msg})
            yield (stub, "failed_to_read", msg)
            continue
        meta.update(width=w, height=h)
        yield {"__key__": key, ext: data, "cls": item.class_id, "txt": task.prompts(item.class_id)[0], "json": meta}


def from_folder(
    folder: str | os.PathLike[str], task: TaskSpec, out: str | os.PathLike[str], cfg: ShardsConfig, progress: bool = True
) -> dict[str, Any]:
    """Convert ``folder`` into shards under ``out``; returns (and writes) the stage stats."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise SynthimgError(f"image folder not found: {folder}")
    start = time.time()
    items, other = list_items(folder, task)
    if not items:
        raise SynthimgError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    out.mkdir(parents=True, exist_ok=True)
    chunks = [items[i : i + cfg.maxcount] for i in range(0, len(items), cfg.maxcount)]
    skipped: list[dict[str, str]] = []
    resumed = 0
    from synthimg.progress import progress_bar

    with progress_bar(total=len(items), description="shards from-folder", enabled=progress) as bar:
        for index, chunk in enumerate(chunks):
            path = out / shard_name(cfg.prefix, index)
            if path.is_file():  # completed by an earlier run: same keys and bytes, skip it
                skipped.extend(_skipped_from_fragment(path))
                resumed += 1
            else:
                write_shard(path, _shard_samples(chunk, index * cfg.maxcount, task, cfg, skipped))
            bar.advance(len(chunk))
    sizes = finalize(out, task.classnames, split=cfg.split)
    per_class = Counter(it.class_id for it in items)
    failed = Counter(task.classnames[items[int(s["key"])].class_id] for s in skipped)
    stats = {
        "count": len(items),
        "successes": sum(sizes.values()),
        "failed_to_read": len(skipped),
        "not_an_image": len(other),
        "duration": round(time.time() - start, 3),
        "status_dict": {"success": sum(sizes.values()), "failed_to_read": len(skipped)},
        "per_class": {task.classnames[c]: n - failed.get(task.classnames[c], 0) for c, n in sorted(per_class.items())},
        "missing_classes": [c for i, c in enumerate(task.classnames) if i not in per_class],
        "skipped": skipped,
        "shards": len(sizes),
        "shards_resumed": resumed,
    }
    (out / "from_folder_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def _skipped_from_fragment(tar: Path) -> list[dict[str, str]]:
    import pandas as pd

    frag = fragment_path(tar)
    if not frag.is_file():
        return []
    df = pd.read_parquet(frag)
    bad = df[df["status"] != "success"]
    return [{"key": r.key, "path": r.source_path, "error": r.error} for r in bad.itertuples()]


def run(cfg: Config, imagefolder: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """``shards from-folder``: the shards, their manifest and metadata, and the resolved config."""
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task: which task's classes the folders name (--task)")
    stats = from_folder(imagefolder, get_task(cfg.task), out, cfg.shards)
    save_resolved(cfg, out)
    return stats
