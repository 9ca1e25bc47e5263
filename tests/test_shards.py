import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import torch

from synthimg.data.inspect import inspect_shards
from synthimg.data.loader import SkipStats, shard_loader, shard_pipeline
from synthimg.data.manifest import check_keys, read_keys, read_manifest, write_keys
from synthimg.data.shards import (
    ShardWriter,
    list_shards,
    write_shard,
)
from synthimg.errors import SynthimgError
from tests.conftest import CLASSNAMES, make_sample, write_dataset


def keys_of(records):
    return [r["key"] for r in records]


def test_round_trip(shard_dir):
    out, keys = shard_dir
    assert [Path(p).name for p in list_shards(out)] == [f"shard-00000{i}.tar" for i in range(4)]
    assert json.loads((out / "sizes.json").read_text()) == {f"shard-00000{i}.tar": 10 for i in range(4)}
    info = json.loads((out / "_info.json").read_text())["splits"]["train"]
    assert info["num_samples"] == 40 and info["shard_lengths"] == [10] * 4
    assert (out / "classnames.txt").read_text().split("\n")[:2] == ["airplane", "automobile"]
    records = list(shard_pipeline(out, with_meta=True))
    assert sorted(keys_of(records)) == keys
    first = records[0]
    assert first["label"] == 0 and first["text"] == "a photo of a airplane." and first["image"].size == (16, 16)
    assert first["meta"] == {"source": "upstream", "class_id": 0, "class_name": "airplane"}
    manifest = read_manifest(out)
    assert list(manifest["key"]) == keys and set(manifest["shard"]) == {f"shard-00000{i}.tar" for i in range(4)}
    assert {"source", "class_id", "class_name", "caption", "status"} <= set(manifest.columns)


def test_keys_must_not_contain_dots(tmp_path):
    bad = make_sample(0, 0, CLASSNAMES) | {"__key__": "img.0"}
    with pytest.raises(ValueError, match="without dots"):
        write_shard(tmp_path / "s-000000.tar", [bad])
    assert not list(tmp_path.glob("*.tar*"))  # the aborted tmp file is gone


def test_interrupted_writer_leaves_no_tar(tmp_path):
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError):
        with ShardWriter(out, maxcount=5) as writer:
            for i in range(8):
                writer.write(make_sample(i, 0, CLASSNAMES))
            raise RuntimeError("killed")
    assert [p.name for p in out.glob("*.tar")] == ["shard-000000.tar"]  # only the complete shard
    assert not list(out.glob("*.tmp"))


def _truncate(tar_path: Path, fraction: float) -> set[str]:
    """Cut a tar mid-way; return the keys whose members all lie before the cut."""
    size = tar_path.stat().st_size
    cut = int(size * fraction)
    complete: dict[str, bool] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key = m.name.split(".", 1)[0]
            complete[key] = complete.get(key, True) and (m.offset_data + m.size + 511) // 512 * 512 <= cut
    tar_path.write_bytes(tar_path.read_bytes()[:cut])
    return {k for k, ok in complete.items() if ok}


def _corrupt(out: Path, key: str) -> None:
    """Replace one sample's JPEG bytes by a JPEG header plus garbage, rewriting its shard."""
    import io

    shard = out / f"shard-{int(key) // 10:06d}.tar"  # write_dataset puts 10 samples per shard
    with tarfile.open(shard) as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    data[f"{key}.jpg"] = data[f"{key}.jpg"][:40] + b"\x00garbage" * 20
    tmp = shard.with_suffix(".rewrite")
    with tarfile.open(tmp, "w") as tar:
        for name, blob in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tmp.replace(shard)


def test_truncated_tar_and_corrupt_jpeg_are_counted_and_skipped(shard_dir):
    out, keys = shard_dir
    shards = sorted(out.glob("*.tar"))
    before_cut = _truncate(shards[1], 0.55)
    bad_key = keys[25]  # in shard 2
    _corrupt(out, bad_key)
    stats = SkipStats()
    records = list(shard_pipeline(out, stats=stats))
    read = keys_of(records)
    good = set(keys[:10]) | before_cut | (set(keys[20:]) - {bad_key})
    assert len(read) == len(set(read)), "a sample was read twice"
    assert set(read) == good
    counts = stats.as_dict()
    assert counts["corrupt_image"] == 1
    assert counts["unreadable_tar"] + counts["incomplete_sample"] >= 1
    report = inspect_shards(out, progress=False)
    assert report["total"] == len(good) and report["skipped"]["corrupt_image"] == 1
    assert "shard-000001.tar" in report["short_shards"]


def test_key_restricted_loader(shard_dir):
    out, keys = shard_dir
    subset = keys[3:30:4]
    path = write_keys(subset, out.parent / "keys.parquet")
    assert read_keys(path) == subset
    check_keys(out, subset)
    assert sorted(keys_of(shard_pipeline(out, keys=read_keys(path)))) == sorted(subset)
    with pytest.raises(SynthimgError, match="2 keys of the key list are not in"):
        check_keys(out, subset + ["999999998", "999999999"])


def test_two_workers_read_each_sample_once(shard_dir):
    out, keys = shard_dir
    _corrupt(out, keys[7])
    loader = shard_loader(out, batch_size=4, num_workers=2, transform=lambda im: torch.zeros(1), resample="never")
    seen = [k for batch in loader for k in batch["key"]]
    assert sorted(seen) == [k for k in keys if k != keys[7]]
    assert loader.skip_stats.as_dict()["corrupt_image"] == 1  # counted inside a worker process


def test_fewer_shards_than_workers(tmp_path):
    out = tmp_path / "few"
    write_dataset(out, n=10, maxcount=10)
    with pytest.raises(SynthimgError, match="1 shards cannot feed 1 ranks x 2 workers"):
        shard_loader(out, batch_size=2, num_workers=2, resample="never")
    loader = shard_loader(out, batch_size=2, num_workers=2, epoch_size=12, transform=lambda im: torch.zeros(1))
    assert loader.resampled
    assert sum(len(b["key"]) for b in loader) == 12  # bounded, never hangs


def test_node_split_is_disjoint_and_complete(shard_dir, monkeypatch):
    out, keys = shard_dir
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(set(keys_of(shard_pipeline(out))))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(keys)


def _imagefolder(root: Path) -> Path:
    from PIL import Image

    folder = root / "imagefolder"
    for name in ("airplane", "Automobile", "3"):  # a name, a name in another case, an index
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10 + i, 12), (i * 40, 10, 10)).save(folder / name / f"img{i}.{'png' if i % 2 else 'jpg'}")
    Image.new("RGB", (9, 9)).save(folder / "3" / "img_bmp.bmp")
    (folder / "3" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "3" / "notes.txt").write_text("not an image")
    return folder


def test_from_folder(tmp_path):
    from synthimg.config import ShardsConfig
    from synthimg.data.from_folder import from_folder
    from synthimg.tasks import get_task

    folder = _imagefolder(tmp_path)
    out = tmp_path / "out"
    stats = from_folder(folder, get_task("cifar10"), out, ShardsConfig(maxcount=5), progress=False)
    assert stats["successes"] == 13 and stats["failed_to_read"] == 1 and stats["not_an_image"] == 1
    assert stats["skipped"][0]["path"].endswith("broken.jpg")
    assert stats["per_class"] == {"airplane": 4, "automobile": 4, "cat": 5}
    records = list(shard_pipeline(out, with_meta=True))
    by_label = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
        assert Path(r["meta"]["source_path"]).parent.name in ("airplane", "Automobile", "3")
    assert sorted(by_label) == [0, 1, 3] and len(by_label[3]) == 5
    manifest = read_manifest(out, successes_only=False)
    assert (manifest["status"] == "failed_to_read").sum() == 1
    # resume: drop the last shard and rerun -> byte-identical shards
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")}
    sorted(out.glob("*.tar"))[-1].unlink()
    again = from_folder(folder, get_task("cifar10"), out, ShardsConfig(maxcount=5), progress=False)
    assert again["shards_resumed"] == len(digests) - 1 and again["failed_to_read"] == 1
    assert digests == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")}


def test_from_folder_unknown_names_are_listed(tmp_path):
    from synthimg.config import ShardsConfig
    from synthimg.data.from_folder import from_folder
    from synthimg.tasks import get_task

    folder = _imagefolder(tmp_path)
    (folder / "zebra").mkdir()
    (folder / "77").mkdir()
    with pytest.raises(SynthimgError, match=r"2 folder names .* 0\.\.9: 77, zebra"):
        from_folder(folder, get_task("cifar10"), tmp_path / "o", ShardsConfig(), progress=False)


def test_cli_from_folder_and_inspect(tmp_path, capsys):
    from synthimg.cli import main

    folder = _imagefolder(tmp_path)
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as info:
        main(["shards", "from-folder", str(folder), "--task", "cifar10", "--out", str(out), "shards.maxcount=4"])
    assert info.value.code == 0
    assert json.loads((out / "sizes.json").read_text())["shard-000000.tar"] == 4
    assert "maxcount: 4" in (out / "config.yaml").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["shards", "inspect", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 13 and len(report["missing_classes"]) == 7 and report["skipped_total"] == 0


def test_readable_by_plain_webdataset_open_clip_and_timm(shard_dir):
    import webdataset as wds

    out, keys = shard_dir
    urls = list_shards(out)
    plain = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "cls", "txt"))
    assert [k for k, *_ in plain] == keys and plain[3][2] == 3

    import argparse

    import open_clip
    import torchvision.transforms as T
    from open_clip_train.data import get_wds_dataset

    args = argparse.Namespace(
        train_data=str(out / "shard-{000000..000003}.tar"), val_data=None, dataset_resampled=False,
        train_num_samples=None, train_data_upsampling_factors=None, seed=0, batch_size=4, workers=1, world_size=1,
    )
    data = get_wds_dataset(args, T.Compose([T.Resize((16, 16)), T.ToTensor()]), True, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    assert data.dataloader.num_samples == 40  # epoch size from sizes.json
    assert sum(images.shape[0] for images, _ in data.dataloader) == 40

    import timm.data

    ds = timm.data.create_dataset("wds/shards", root=str(out), split="train", is_training=False, batch_size=1)
    assert len(ds) == 40 and sorted(int(t) for _, t in ds) == sorted(i % 10 for i in range(40))


DDP_SCRIPT = """
import json, sys, torch.distributed as dist
from synthimg.data.loader import shard_loader
dist.init_process_group("gloo")
loader = shard_loader(sys.argv[1], batch_size=3, num_workers=2, resample="never")
keys = [k for batch in loader for k in batch["key"]]
out = [None] * dist.get_world_size()
dist.all_gather_object(out, keys)
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_ranks_two_workers(shard_dir, tmp_path):
    import subprocess
    import sys

    out, keys = shard_dir
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    result = tmp_path / "keys.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(out), str(result)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    per_rank = json.loads(result.read_text())
    assert len(per_rank) == 2 and all(per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == keys


def test_inspect_on_something_that_is_not_a_shard_folder(tmp_path, capsys):
    import tarfile

    from synthimg.cli import main

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with tarfile.open(tmp_path / "other" / "backup.tar", "w") as t:
        t.add(tmp_path / "other" / "notes.txt", arcname="notes.txt")
    for target in (tmp_path / "other", tmp_path / "other" / "notes.txt"):
        with pytest.raises(SystemExit) as info:
            main(["shards", "inspect", str(target)])
        assert info.value.code == 2
        errors = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
        assert len(errors) == 1 and "is not a shard folder" in errors[0]
