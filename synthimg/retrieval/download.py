"""Download candidates with img2dataset, exactly ``per_class`` images per class (``synthimg download``).

Each round asks img2dataset (the library, not a subprocess) for ``overrequest`` x the missing
count of every short class, from the next candidates not yet tried; rounds go on until every
class has its quota or its candidates run out, and the shortfall is reported. img2dataset's
opt-out defaults are kept (``noai``, ``noimageai``, ``noindex``, ``noimageindex`` in
``X-Robots-Tag``), with our user agent token. Rounds are folders of img2dataset output, so a
rerun skips finished rounds (img2dataset's incremental mode skips finished shards). The
result is rewritten into our shard format (labels, provenance with url, caption, query,
similarity, backend, sha256); failed rows stay in the manifest with img2dataset's status and
error, so a retry of only the failures is possible.

Once the final shards, the manifest and ``download_stats.json`` (which marks the download
complete, with a hash of its inputs) are written, the round folders are removed: they would
double the disk use (about 200 GB at ImageNet's 10M images). ``keep_rounds`` keeps them. A
rerun with the same candidates and settings finds the complete stats and downloads nothing;
an interrupted run still resumes from its rounds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.atomic import atomic_write
from synthimg.config import Config, DownloadConfig
from synthimg.data.parquet import read_table
from synthimg.data.shards import finalize, sample_key, shard_name, write_shard
from synthimg.errors import SynthimgError
from synthimg.tasks.spec import TaskSpec


def _img2dataset_round(urls: pd.DataFrame, folder: Path, cfg: DownloadConfig) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which phones home
    from img2dataset import download

    folder.mkdir(parents=True, exist_ok=True)
    url_file = folder / "urls.parquet"
    urls.to_parquet(url_file, index=False)
    download(
        url_list=str(url_file), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["cand_id"], output_format="webdataset", output_folder=str(folder / "out"),
        image_size=cfg.image_size, resize_mode="border", processes_count=cfg.processes, thread_count=cfg.threads,
        number_sample_per_shard=cfg.shard_size, timeout=cfg.timeout, retries=cfg.retries, distributor=cfg.distributor,
        user_agent_token=cfg.user_agent_token, enable_wandb=False, incremental_mode="incremental", compute_hash="sha256",
    )
    (folder / "DONE").write_text("ok")


def _round_results(folder: Path) -> pd.DataFrame:
    """Every row img2dataset tried in a round: cand_id, status, error_message, sha256, and which tar holds it."""
    frames = [pd.read_parquet(p) for p in sorted((folder / "out").glob("*.parquet"))]
    if not frames:
        return pd.DataFrame(columns=["cand_id", "status", "error_message", "sha256", "key"])
    df = pd.concat(frames, ignore_index=True)
    return df


def _read_images(folder: Path, keys: set[str]) -> dict[str, bytes]:
    found = {}
    for tar in sorted((folder / "out").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                stem, _, ext = m.name.rpartition(".")
                if ext == "jpg" and stem in keys:
                    found[stem] = t.extractfile(m).read()
    return found


def download(candidates: str | Path, task: TaskSpec, cfg: DownloadConfig, out: str | Path) -> dict[str, Any]:
    """Run the rounds, then write our shards with exactly ``per_class`` images where candidates suffice."""
    out = Path(out)
    path = Path(candidates)
    if not path.is_file():
        raise SynthimgError(f"candidates not found: {path}")
    inputs = _inputs_hash(path, cfg)
    finished = _finished(out, inputs, cfg.keep_rounds)
    if finished is not None:  # a complete download of the same candidates: nothing to fetch again
        return finished
    _refuse_other_inputs(out, inputs)
    cands = read_table(path)
    missing = {"class_id", "url"} - set(cands.columns)
    if missing:
        raise SynthimgError(f"{path} lacks columns: {', '.join(sorted(missing))}")
    if cands.empty:
        raise SynthimgError(f"{path} holds no candidates")
    for col in ("caption", "query", "similarity", "backend", "upstream_id", "class_name", "index", "rank"):
        if col not in cands:
            cands[col] = None
    cands = cands.reset_index(drop=True)
    cands["cand_id"] = cands.index.astype(int)
    start = time.time()
    tried: set[int] = set()
    ok: dict[int, list[int]] = {c: [] for c in range(task.num_classes)}
    quota = {c: cfg.per_class for c in range(task.num_classes)}
    results: list[pd.DataFrame] = []
    rounds_dir = out / "_rounds"
    rounds_dir.mkdir(parents=True, exist_ok=True)
    (rounds_dir / "inputs.txt").write_text(inputs)
    for r in range(cfg.max_rounds):
        left = cands.loc[~cands["cand_id"].isin(tried)].groupby("class_id").size()
        settled = all(len(ok[c]) >= quota[c] or left.get(c, 0) == 0 for c in quota)  # met, or out of candidates
        if settled and not _top_up(quota, ok, left, cfg.total):
            break
        folder = rounds_dir / f"round_{r:03d}"
        if (folder / "DONE").is_file():
            asked = pd.read_parquet(folder / "urls.parquet")
        else:
            picks = []
            for c in range(task.num_classes):
                need = quota[c] - len(ok[c])
                if need <= 0:
                    continue
                pool = cands[(cands["class_id"] == c) & ~cands["cand_id"].isin(tried)]
                picks.append(pool.head(math.ceil(need * cfg.overrequest)))
            asked = pd.concat(picks, ignore_index=True) if picks else pd.DataFrame()
            if asked.empty:
                break
            _img2dataset_round(asked[["url", "caption", "cand_id"]], folder, cfg)
        tried |= set(asked["cand_id"].astype(int))
        res = _round_results(folder).assign(round_dir=str(folder))
        results.append(res)
        # in candidate order, not img2dataset's (its threads finish in any order): with over-request,
        # the best-ranked successes fill each quota, the same ones on every run
        for row in res[res["status"] == "success"].sort_values("cand_id", kind="stable").itertuples():
            c = int(cands.at[int(row.cand_id), "class_id"])
            if len(ok[c]) < quota[c]:
                ok[c].append(int(row.cand_id))
    tried_rows = pd.concat(results, ignore_index=True) if results else pd.DataFrame()
    _write_shards(cands, tried_rows, ok, task, cfg, out)
    sizes = finalize(out, task.classnames)
    per_class = {task.classnames[c]: len(v) for c, v in ok.items()}
    kept_total = sum(per_class.values())
    statuses = tried_rows["status"].value_counts().to_dict() if not tried_rows.empty else {}
    stats = {
        "count": int(len(tried_rows)), "successes": int(statuses.get("success", 0)), "kept": sum(sizes.values()),
        "failed_to_download": int(statuses.get("failed_to_download", 0)),
        "failed_to_resize": int(statuses.get("failed_to_resize", 0)), "status_dict": statuses,
        "errors": tried_rows.loc[tried_rows["status"] != "success", "error_message"].value_counts().head(20).to_dict()
        if not tried_rows.empty else {},
        "per_class": per_class, "quota": cfg.per_class,
        "shortfall": {k: cfg.per_class - v for k, v in per_class.items() if v < cfg.per_class},
        "total_wanted": cfg.total, "total_shortfall": max(0, (cfg.total or 0) - kept_total),
        "rounds": len(results), "duration": round(time.time() - start, 3),
        "complete": True, "inputs_hash": inputs,
    }
    atomic_write(out / "download_stats.json", json.dumps(stats, indent=1, default=str))  # the stats mark the download complete: written before the rounds go
    if not cfg.keep_rounds:
        shutil.rmtree(rounds_dir, ignore_errors=True)
    return stats


def _top_up(quota: dict[int, int], ok: dict[int, list[int]], left: pd.Series, total: int | None) -> bool:
    """Raise the quotas of classes that still have untried candidates (``left``) until ``total`` images are kept.

    Every class has met its quota or run out when this is asked. Short classes are made up
    by the others, as the subsets fill a short class from the rest. False: nothing to raise.
    """
    kept = sum(len(v) for v in ok.values())
    if total is None or kept >= total:
        return False
    open_classes = [c for c in quota if left.get(c, 0) > 0 and len(ok[c]) >= quota[c]]
    if not open_classes:
        return False
    share, rest = divmod(total - kept, len(open_classes))
    for n, c in enumerate(sorted(open_classes)):  # exactly the deficit: the first `rest` classes one more
        quota[c] += share + (1 if n < rest else 0)
    return True


def _refuse_other_inputs(out: Path, inputs: str) -> None:
    """Rounds or a complete download of other candidates or settings are not ours to reuse, nor to overwrite."""
    marker = out / "_rounds" / "inputs.txt"
    if marker.is_file() and marker.read_text().strip() != inputs:
        raise SynthimgError(f"{out} holds download rounds of other candidates or settings; use another --out, "
                            f"or delete {out / '_rounds'} to start over")
    stats = out / "download_stats.json"
    if stats.is_file() and not marker.is_file():
        try:
            done = json.loads(stats.read_text())
        except ValueError:
            return
        if done.get("complete") and done.get("inputs_hash") != inputs:
            raise SynthimgError(f"{out} holds a complete download of other candidates or settings; use another "
                                "--out, or delete the folder to download again")


def _inputs_hash(candidates: Path, cfg: DownloadConfig) -> str:
    """What a finished download was made from: the candidates' bytes and the settings that change the result."""
    import hashlib

    digest = hashlib.sha256()
    with open(candidates, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    keep = {k: v for k, v in cfg.model_dump(mode="json").items()
            if k not in ("processes", "threads", "distributor", "keep_rounds")}
    digest.update(json.dumps(keep, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _finished(out: Path, inputs: str, keep_rounds: bool) -> dict[str, Any] | None:
    """The stats of a complete earlier download of the same inputs whose shards are all there, else None."""
    stats_path = out / "download_stats.json"
    if not (stats_path.is_file() and (out / "sizes.json").is_file()):
        return None
    try:
        stats = json.loads(stats_path.read_text())
        sizes = json.loads((out / "sizes.json").read_text())
    except ValueError:
        return None
    if not stats.get("complete") or stats.get("inputs_hash") != inputs:
        return None
    if not all((out / name).is_file() for name in sizes):
        return None
    if not keep_rounds:
        shutil.rmtree(out / "_rounds", ignore_errors=True)  # a run killed after the stats, before the clean-up
    return stats


def _write_shards(cands: pd.DataFrame, tried: pd.DataFrame, ok: dict[int, list[int]], task: TaskSpec,
                  cfg: DownloadConfig, out: Path) -> None:
    """Our shard format: kept images in class then candidate order; failures as manifest rows."""
    info = tried.set_index("cand_id") if not tried.empty else pd.DataFrame()
    kept = [i for c in range(task.num_classes) for i in ok[c]]
    images: dict[int, bytes] = {}
    for folder, group in (tried[tried["cand_id"].isin(kept)].groupby("round_dir") if not tried.empty else []):
        blobs = _read_images(Path(folder), set(group["key"].astype(str)))
        images.update({int(r.cand_id): blobs[str(r.key)] for r in group.itertuples() if str(r.key) in blobs})
    failed = tried[tried["status"] != "success"] if not tried.empty else tried
    items: list[Any] = []
    for n, cid in enumerate(kept):
        row = cands.loc[cid]
        meta = {"source": "retrieved", "class_id": int(row.class_id), "class_name": task.classnames[int(row.class_id)],
                "url": row.url, "caption": row.caption, "query": row.query,
                "similarity": None if pd.isna(row.similarity) else float(row.similarity), "backend": row.backend,
                "upstream_id": None if row.upstream_id is None else str(row.upstream_id),
                "knn_index": None if pd.isna(row["index"]) else str(row["index"]),
                "knn_rank": None if pd.isna(row["rank"]) else int(row["rank"]),
                "sha256": info.at[cid, "sha256"] if "sha256" in info else None}
        items.append({"__key__": sample_key(n), "jpg": images[cid], "cls": int(row.class_id),
                      "txt": str(row.caption or ""), "json": meta})
    for m, r in enumerate(failed.itertuples() if not failed.empty else []):
        row = cands.loc[int(r.cand_id)]
        stub = {"__key__": sample_key(len(kept) + m), "json": {
            "source": "retrieved", "class_id": int(row.class_id), "class_name": task.classnames[int(row.class_id)],
            "url": row.url, "query": row.query, "backend": row.backend}}
        items.append((stub, str(r.status), str(r.error_message)))
    for old in out.glob("shard-*.tar"):
        old.unlink()  # the shards are derived from the rounds: rebuild them whole
    per = cfg.shard_size
    for s in range(0, max(1, len(items)), per):
        chunk = items[s : s + per]
        if chunk:
            write_shard(out / shard_name("shard", s // per), chunk)


def run(cfg: Config, candidates: str | Path, out: str | Path) -> dict[str, Any]:
    """``download``: our shards of the downloaded images, OUT/download_stats.json and the resolved config."""
    from synthimg.config import save_resolved
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task (--task, or a config.yaml beside the candidates)")
    stats = download(candidates, get_task(cfg.task), cfg.download, out)
    save_resolved(cfg, out)
    return stats
