"""IID training batches from fully class-sorted shards, for 1 and 2 ranks and 0 and 2 workers."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthimg.config import load_config
from synthimg.data.shards import ShardWriter, finalize, sample_key

CLASSES, PER_CLASS, BATCH = 20, 50, 64
NAMES = [f"class{c}" for c in range(CLASSES)]


def _jpeg(c: int, i: int) -> bytes:
    rng = np.random.default_rng([c, i])
    arr = np.clip(rng.normal(40 + 10 * c, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sorted_shards(tmp_path_factory) -> Path:
    """20 classes x 50 images, written class by class: every shard holds one class only."""
    out = tmp_path_factory.mktemp("sorted") / "shards"
    with ShardWriter(out, maxcount=PER_CLASS) as w:
        for c in range(CLASSES):
            for i in range(PER_CLASS):
                w.write({"__key__": sample_key(c * PER_CLASS + i), "jpg": _jpeg(c, i), "cls": c, "txt": "x",
                         "json": {"source": "retrieved", "class_id": c, "class_name": NAMES[c]}})
    finalize(out, NAMES)
    return out


def _table(shards: Path, *overrides: str):
    from synthimg.train.data import resolve_sources, sample_table

    cfg = load_config(overrides=[f"train.data=[{shards}]", f"train.batch_size={BATCH}", *overrides])
    return cfg.train, sample_table(resolve_sources(cfg.train))


def _items(plan) -> list[int]:
    return [i for micro in plan for i, w in micro if w > 0]


@pytest.mark.parametrize("world", [1, 2])
def test_each_sample_once_per_epoch_and_order_is_a_function_of_seed_and_epoch(sorted_shards, world):
    from synthimg.train.data import plan_epoch

    tcfg, table = _table(sorted_shards)
    assert len(table) == CLASSES * PER_CLASS
    for epoch in (0, 1):
        seen = sorted(i for r in range(world) for i in _items(plan_epoch(table, tcfg, epoch, world, r)))
        assert seen == list(range(len(table)))
    a, b = plan_epoch(table, tcfg, 0, world, 0), plan_epoch(table, tcfg, 0, world, 0)
    assert list(a) == list(b)  # deterministic
    assert _items(plan_epoch(table, tcfg, 1, world, 0)) != _items(a)  # a new permutation each epoch
    reseeded = plan_epoch(table, tcfg.model_copy(update={"seed": 1}), 0, world, 0)
    assert _items(reseeded) != _items(a)
    # the global batches are the same whatever the number of ranks
    one = plan_epoch(table, tcfg, 0, 1, 0)
    assert [a.global_batch(s).tolist() for s in range(a.steps)] == [one.global_batch(s).tolist() for s in range(one.steps)]


def test_batch_diversity_matches_iid_and_the_check_can_fail(sorted_shards):
    from synthimg.train.data import (
        MicroBatches,
        batch_diversity,
        expected_distinct,
        plan_epoch,
    )

    tcfg, table = _table(sorted_shards)
    iid = expected_distinct(np.full(CLASSES, PER_CLASS), BATCH)
    assert 19.0 < iid < 20.0  # 20 classes, 64 of 1000 drawn: almost every class
    for epoch in range(3):
        d = batch_diversity(table, plan_epoch(table, tcfg, epoch, 1, 0))
        assert d["batch_classes_mean"] >= 0.95 * d["batch_classes_iid"]
    # the shards' own order (what a stream of class-sorted shards gives) fails the same check
    stream = MicroBatches(np.arange(len(table)), BATCH, 1, 0, 1)
    d = batch_diversity(table, stream)
    assert d["batch_classes_mean"] < 0.3 * d["batch_classes_iid"]


def test_expected_distinct_against_simulation():
    from synthimg.train.data import expected_distinct

    counts = np.array([300, 100, 50, 20, 10, 5, 5, 5, 3, 2])
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    sim = np.mean([len(np.unique(rng.choice(labels, 40, replace=False))) for _ in range(4000)])
    assert expected_distinct(counts, 40) == pytest.approx(sim, abs=0.05)


def test_loader_gives_the_same_batches_with_0_and_2_workers(sorted_shards):
    from synthimg.train.data import epoch_loader, plan_epoch

    tcfg, table = _table(sorted_shards)
    plan = plan_epoch(table, tcfg, 0, 1, 0)
    runs = {}
    for workers in (0, 2):
        runs[workers] = [(b["index"].tolist(), b["label"].tolist()) for b in epoch_loader(table, plan, None, workers)]
    assert runs[0] == runs[2]
    indices = [i for idx, _ in runs[0] for i in idx]
    assert sorted(indices[: len(table)]) == list(range(len(table)))  # then the padding of the last batch
    labels = {i: lab for idx, labs in runs[0] for i, lab in zip(idx, labs)}
    assert all(labels[i] == i // PER_CLASS for i in labels)  # labels travel with their samples


def _train(shards: Path, logs: Path, name: str, workers: int, launcher: list[str] | None = None) -> dict:
    args = ["--quiet", "train", "--train-data", str(shards), "--task", "cifar100", "--model", "synthimg-tiny-vit",
            "--pretrained", "none", "--epochs", "2", "--batch-size", str(BATCH), "--lr", "1e-3", "--warmup", "2",
            "--workers", str(workers), "--logdir", str(logs), "--name", name, "train.precision=fp32"]
    proc = subprocess.run([*(launcher or [sys.executable, "-m", "synthimg"]), *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((logs / name / "train_stats.json").read_text())


@pytest.mark.parametrize("workers", [0, 2])
def test_train_records_iid_batches_and_full_coverage(sorted_shards, tmp_path, workers):
    stats = _train(sorted_shards, tmp_path, f"w{workers}", workers)
    _check(stats)
    log = (tmp_path / f"w{workers}" / "out.log").read_text()
    assert log.count("batch_classes_mean") == 2 and log.count("batch_classes_iid") == 2


@pytest.mark.slow
def test_train_under_torchrun_two_ranks(sorted_shards, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "synthimg"]
    stats = _train(sorted_shards, tmp_path, "ddp", 2, torchrun)
    assert stats["world_size"] == 2
    _check(stats)


def _check(stats: dict) -> None:
    assert [e["epoch"] for e in stats["per_epoch"]] == [1, 2]
    for e in stats["per_epoch"]:
        assert e["batch_classes_mean"] >= 0.95 * e["batch_classes_iid"], e
        assert e["seen_once"] == e["samples"] == CLASSES * PER_CLASS and e["unseen"] == e["seen_more"] == 0, e


def test_more_shards_than_open_files_all_read(tmp_path):
    from synthimg.data.tar_index import TarSamples

    tcfg, table = _table(_small_sorted(tmp_path, per_shard=5))  # 20 shards
    data = TarSamples(table, max_open=3)
    order = np.random.default_rng(0).permutation(len(table))
    assert all(data[(int(i), 1.0)]["label"] == table.label[i] for i in order)
    assert len(data._files) == 3


def test_weights_equal_to_the_sizes_are_the_union(tmp_path):
    from synthimg.train.data import plan_epoch

    shards = _small_sorted(tmp_path, per_shard=10)
    # a weight one above the usable size (a sample lost to a truncated tar): still the union, no sample twice
    tcfg, table = _table(shards, f"train.weights=[{len(NAMES) * 10 + 1}]")
    for epoch in range(3):
        items = sorted(_items(plan_epoch(table, tcfg, epoch, 1, 0)))
        assert items == list(range(len(table)))


def _small_sorted(tmp_path: Path, per_shard: int) -> Path:
    out = tmp_path / "small"
    with ShardWriter(out, maxcount=per_shard) as w:
        for c in range(CLASSES):
            for i in range(10):
                w.write({"__key__": sample_key(c * 10 + i), "jpg": _jpeg(c, i), "cls": c, "txt": "x",
                         "json": {"source": "retrieved", "class_id": c, "class_name": NAMES[c]}})
    finalize(out, NAMES)
    return out
