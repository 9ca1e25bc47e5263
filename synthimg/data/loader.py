"""Reading shards: a webdataset pipeline that splits by node and worker and skips bad data with counts.

Skipping is a policy passed in as webdataset ``handler=`` callables (:class:`SkipHandler`),
never a try/except scattered through loops. Counters live in shared memory, so skips made
inside DataLoader workers are counted too (:class:`SkipStats`).

Under DDP the shard list is split explicitly by rank (webdataset 1.x refuses multi-process
runs without a node splitter), then by worker. With fewer shards than ranks x workers the
loader either switches to resampled mode or stops with a clear message, never hangs.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from synthimg.data.shards import IMAGE_EXTS, list_shards
from synthimg.dist import rank_world
from synthimg.errors import SynthimgError

log = logging.getLogger(__name__)

REASONS = ("unreadable_tar", "corrupt_image", "incomplete_sample", "bad_label")


class IncompleteSample(ValueError):
    """A sample without an image or a label (for example the tail of a truncated tar)."""


class SkipStats:
    """Skip counters by reason, in shared memory so DataLoader workers can add to them."""

    def __init__(self) -> None:
        self._counts = mp.Array("q", len(REASONS))

    def add(self, reason: str) -> None:
        with self._counts.get_lock():
            self._counts[REASONS.index(reason)] += 1

    def as_dict(self) -> dict[str, int]:
        with self._counts.get_lock():
            return {r: int(self._counts[i]) for i, r in enumerate(REASONS)}

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


class SkipHandler:
    """A webdataset error handler: count the exception under a reason, log one line, continue."""

    def __init__(self, stats: SkipStats, stage: str):
        self.stats, self.stage = stats, stage

    def __call__(self, exn: BaseException) -> bool:
        if self.stage == "tar":
            reason = "unreadable_tar"
        elif isinstance(exn, IncompleteSample):
            reason = "incomplete_sample"
        elif isinstance(exn, (KeyError, TypeError)) or "label" in str(exn):
            reason = "bad_label"
        else:
            reason = "corrupt_image"
        self.stats.add(reason)
        first = str(exn.args[0]) if exn.args else type(exn).__name__
        where = f" in {exn.args[-1]}" if self.stage == "tar" and len(exn.args) > 1 else ""
        log.warning("skipped (%s): %s%s", reason, (first.splitlines() or [""])[0][:300], where)
        return True



def split_by_node(src: Iterable[Any]) -> Iterator[Any]:
    """Explicit node splitter: rank r takes every world-th shard, starting at r."""
    rank, world = rank_world()
    for i, item in enumerate(src):
        if i % world == rank:
            yield item


class KeyFilter:
    """Keep only samples whose key is in ``keys`` (a curated subset); picklable for workers."""

    def __init__(self, keys: Iterable[str]):
        self.keys = frozenset(str(k) for k in keys)

    def __call__(self, sample: dict[str, Any]) -> bool:
        return sample["__key__"] in self.keys


class Decode:
    """Raw tar sample -> record dict with a fully decoded RGB PIL image and an int label."""

    def __init__(self, transform: Callable[[Any], Any] | None = None, with_meta: bool = False):
        self.transform, self.with_meta = transform, with_meta

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        ext = next((e for e in (*IMAGE_EXTS, "jpeg") if e in sample), None)
        if ext is None or "cls" not in sample:
            raise IncompleteSample(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image or no cls")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise ValueError(f"bad label {sample['cls']!r} in sample {sample['__key__']}") from None
        with Image.open(io.BytesIO(sample[ext])) as img:
            img.load()  # decode now: a corrupt or truncated JPEG fails here, inside the handler
            image = img.convert("RGB")
        record = {
            "image": self.transform(image) if self.transform else image,
            "label": label,
            "key": sample["__key__"],
            "text": sample["txt"].decode("utf-8") if "txt" in sample else "",
        }
        if self.with_meta:
            record["meta"] = json.loads(sample["json"]) if "json" in sample else {}
            record["shard"] = os.path.basename(str(sample.get("__url__", "")))
        return record


def tar_samples(src: Iterable[dict[str, Any]], handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """Shard dicts -> samples, grouping files by key *within* each tar.

    webdataset's ``tarfile_to_samples`` groups the flattened file stream of all tars, so
    when a truncated tar breaks off mid-sample, the half-read sample is still yielded once
    the next tar starts. Grouping per tar drops it with the broken tar instead.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator, url_opener

    for source in url_opener(src, handler=handler):
        url, stream = source["url"], source["stream"]
        try:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            yield from group_by_keys(files)
        except Exception as exn:  # a truncated or unreadable tar: count it, go on with the next
            exn.args = (*exn.args, url)
            if not handler(exn):
                break
        finally:
            stream.close()


def shard_pipeline(
    urls: str | os.PathLike[str] | list[str],
    *,
    keys: Iterable[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    stats: SkipStats | None = None,
    resampled: bool = False,
    shuffle: int = 0,
    seed: int = 0,
    with_meta: bool = False,
    epoch_size: int | None = None,
) -> Any:
    """Build the webdataset pipeline over shards; returns a ``wds.DataPipeline`` (an IterableDataset).

    ``stats`` collects skip counts (pass your own to read them after iterating). In
    resampled mode every worker samples shards with replacement and ``epoch_size``
    (samples per worker) bounds the otherwise infinite stream.
    """
    import webdataset as wds

    shard_list = urls if isinstance(urls, list) else list_shards(urls)
    if not shard_list:
        raise SynthimgError(f"no .tar shards in {urls}")
    stats = stats if stats is not None else SkipStats()
    tar_handler, sample_handler = SkipHandler(stats, "tar"), SkipHandler(stats, "sample")
    if resampled:
        stages: list[Any] = [wds.ResampledShards(shard_list, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(shard_list), split_by_node, wds.split_by_worker]
    stages.append(wds.pipelinefilter(tar_samples)(handler=tar_handler))
    if keys is not None:
        stages.append(wds.select(KeyFilter(keys)))
    if shuffle:
        stages.append(wds.shuffle(shuffle, rng=random.Random(seed)))
    stages.append(wds.map(Decode(transform, with_meta), handler=sample_handler))
    pipeline = wds.DataPipeline(*stages)
    pipeline.skip_stats = stats  # type: ignore[attr-defined]
    pipeline.num_shards = len(shard_list)  # type: ignore[attr-defined]
    if epoch_size is not None:
        pipeline = pipeline.with_epoch(epoch_size)
    return pipeline


def shard_loader(
    urls: str | os.PathLike[str] | list[str],
    *,
    batch_size: int,
    num_workers: int = 0,
    keys: Iterable[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    resample: str = "auto",
    stats: SkipStats | None = None,
    shuffle: int = 0,
    epoch_size: int | None = None,
    drop_last: bool = False,
    with_meta: bool = False,
    seed: int = 0,
) -> Any:
    """A torch DataLoader over shards, safe under DDP.

    ``resample``: ``"never"`` fails with a clear message when there are fewer shards than
    ranks x workers; ``"auto"`` switches to resampled mode then (``epoch_size`` samples per
    rank, required); ``"always"`` always resamples.
    """
    import torch

    shard_list = urls if isinstance(urls, list) else list_shards(urls)
    _, world = rank_world()
    consumers = world * max(1, num_workers)
    if resample not in ("never", "auto", "always"):
        raise SynthimgError(f"resample must be one of never, auto, always (got {resample!r})")
    resampled = resample == "always" or (resample == "auto" and len(shard_list) < consumers)
    if len(shard_list) < consumers and not resampled:
        raise SynthimgError(
            f"{len(shard_list)} shards cannot feed {world} ranks x {max(1, num_workers)} workers: "
            "write more, smaller shards, use fewer workers, or allow resampled mode"
        )
    per_worker = None
    if resampled:
        if epoch_size is None:
            raise SynthimgError("resampled mode needs epoch_size (samples per rank per epoch)")
        per_worker = -(-epoch_size // max(1, num_workers))
    dataset = shard_pipeline(
        shard_list,
        keys=keys,
        transform=transform,
        stats=stats,
        resampled=resampled,
        shuffle=shuffle,
        seed=seed,
        with_meta=with_meta,
        epoch_size=per_worker,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        collate_fn=collate_records,
    )
    loader.skip_stats = dataset.skip_stats  # type: ignore[attr-defined]
    loader.resampled = resampled  # type: ignore[attr-defined]
    return loader


def collate_records(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and labels; keep PIL images, keys, texts and metadata as lists."""
    import torch

    out: dict[str, Any] = {}
    for name in batch[0]:
        values = [r[name] for r in batch]
        if isinstance(values[0], torch.Tensor):
            out[name] = torch.stack(values)
        elif name == "label":
            out[name] = torch.tensor(values, dtype=torch.long)
        else:
            out[name] = values
    return out


def dataset_size(shard_dir: str | os.PathLike[str]) -> int:
    """Samples in a shard folder, from ``sizes.json`` (open_clip's convention)."""
    path = Path(shard_dir) / "sizes.json"
    if not path.is_file():
        raise SynthimgError(f"no sizes.json in {shard_dir}: finalize the shards or run `synthimg shards inspect`")
    return int(sum(json.loads(path.read_text()).values()))
