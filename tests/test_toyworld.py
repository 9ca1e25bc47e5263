"""The toy world: determinism, planted copies, shipped weights through the real loading paths, the demo."""

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import imagehash
import pandas as pd
import pytest
from PIL import Image

from synthimg.data.loader import shard_pipeline
from synthimg.data.shards import list_shards
from synthimg.toyworld.pretrain import (
    CLIP_FILE,
    SD_FOLDER,
    WEIGHTS,
    pretrain,
    write_world_tokenizer,
)
from synthimg.toyworld.world import WorldConfig, build_world, upstream_sample

SMALL = WorldConfig(upstream=400, bench_train=4, bench_val=2, bench_test=6, planted_per_task=4)


def _digest(folder: Path) -> str:
    """Every sample's key, image bytes and caption, upstream and eval (tar headers carry write times)."""
    import tarfile

    h = hashlib.sha256()
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                if not member.name.endswith(".json"):  # json holds the file:// URL, which names the folder
                    h.update(member.name.encode() + t.extractfile(member).read())
    h.update("".join(pd.read_parquet(folder / "upstream" / "metadata.parquet")["caption"]).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root / "a", SMALL)
    return root / "a"


def test_same_seed_same_bytes_other_seed_other_bytes(small_world, tmp_path):
    build_world(tmp_path / "b", SMALL)
    assert _digest(small_world) == _digest(tmp_path / "b")
    assert upstream_sample(0, 7) == upstream_sample(0, 7)
    assert upstream_sample(1, 7)[0] != upstream_sample(0, 7)[0]


def _records(folder: Path) -> list[dict]:
    return list(shard_pipeline([str(p) for p in list_shards(folder)], with_meta=True))


def test_planted_copies_are_near_their_test_images_and_nothing_else_is(small_world):
    info = json.loads((small_world / "world.json").read_text())
    assert len(info["planted"]) == 2 * SMALL.planted_per_task
    meta = pd.read_parquet(small_world / "upstream" / "metadata.parquet")
    assert meta["url"].str.startswith("file://").all()
    up = _records(small_world / "upstream" / "shards")
    assert len(up) == SMALL.upstream + len(info["planted"]) == len(meta)
    hashes = {r["key"]: imagehash.phash(r["image"]) for r in up}
    planted_keys = {p["key"] for p in info["planted"]}
    for task in ("toy_shapes", "toy_polygons"):
        test = {r["key"]: r for r in _records(small_world / "eval" / task / "test")}
        for p in (p for p in info["planted"] if p["planted_from"].startswith(task)):
            source = test[p["planted_from"].rsplit("/", 1)[1]]
            assert hashes[p["key"]] - imagehash.phash(source["image"]) <= 8  # a near-copy pHash catches
        digests = {hashlib.sha256(r["image"].tobytes()).hexdigest() for r in test.values()}
        clean = [r for r in up if r["key"] not in planted_keys]
        assert not digests & {hashlib.sha256(r["image"].tobytes()).hexdigest() for r in clean}
    # the files behind the parquet's URLs are the shard images
    first = meta.iloc[0]
    with Image.open(io.BytesIO(Path(first["url"].removeprefix("file://")).read_bytes())) as img:
        assert img.size == (32, 32)


def test_splits_are_disjoint_and_labelled(small_world):
    for task, n in (("toy_shapes", 10), ("toy_polygons", 6)):
        seen = set()
        for split, per in (("train", SMALL.bench_train), ("val", SMALL.bench_val), ("test", SMALL.bench_test)):
            recs = _records(small_world / "eval" / task / split)
            assert len(recs) == per * n and {r["label"] for r in recs} == set(range(n))
            d = {hashlib.sha256(r["image"].tobytes()).hexdigest() for r in recs}
            assert not d & seen
            seen |= d


def test_shipped_weights_load_offline_through_the_real_paths():
    import torch
    from diffusers import StableDiffusionPipeline

    from synthimg.models.clip import create_clip

    clip, sd = WEIGHTS / CLIP_FILE, WEIGHTS / SD_FOLDER
    assert clip.is_file() and (sd / "model_index.json").is_file()
    size = clip.stat().st_size + sum(p.stat().st_size for p in sd.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    bundle = create_clip("synthimg-toy-clip", str(clip))
    with torch.no_grad():
        feats = bundle.model.encode_image(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 64) and torch.isfinite(feats).all()
    pipe = StableDiffusionPipeline.from_pretrained(sd, torch_dtype=torch.float32)
    out = pipe(["a photo of a circle."], num_inference_steps=2, height=32, width=32, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="pil")
    assert out.images[0].size == (32, 32)
    assert pipe.tokenizer("hexagon").input_ids[1:-1] == [pipe.tokenizer.convert_tokens_to_ids("hexagon</w>")]


def test_world_tokenizer_spells_world_words_and_falls_back_to_characters(tmp_path):
    tok = write_world_tokenizer(tmp_path / "tok")
    assert len(tok("octagon").input_ids) == 3  # start, one word token, end
    assert len(tok("zyzzyva").input_ids) > 3  # unknown words become characters, never <unk>
    assert tok.unk_token_id not in tok("zyzzyva!").input_ids[1:-1]
    assert tok.decode(tok("zyzzyva!").input_ids[1:-1]).replace(" ", "") == "zyzzyva!"


def test_pretraining_runs_a_few_steps(small_world, tmp_path):
    stats = pretrain(small_world, tmp_path / "w", quick=True, echo=lambda *_: None)
    assert (tmp_path / "w" / CLIP_FILE).is_file() and (tmp_path / "w" / SD_FOLDER / "unet").is_dir()
    assert stats["clip"]["steps"] == 5 and stats["sd"]["unet_steps"] == 3


def test_demo_quick_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "synthimg", "--quiet", "demo", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = tmp_path / "study_quick" / "report"
    assert (report / "report.html").is_file() and (report / "scaling_toy_shapes.png").is_file()
    assert "zero-shot on toy_shapes" in proc.stdout and "report:" in proc.stdout
    summary = pd.read_csv(report / "summary.csv")
    assert {"synthetic", "retrieved", "retrieved_substring", "zeroshot_baseline"} <= set(summary["arm"])
    html = (report / "report.html").read_text()
    assert "planted in the upstream" in html and "decontamination dropped" in html
    assert "retrieved - synthetic" in html  # the study's question, answered in the report
    cost = pd.read_csv(report / "cost.csv")
    knn = cost[cost["arm"] == "retrieved"].iloc[0]
    assert knn["data_index_gpu_hours"] > 0 and knn["data_retrieve_gpu_hours"] > 0 and knn["data_score_gpu_hours"] > 0
    assert cost[cost["arm"] == "synthetic"].iloc[0]["data_generate_gpu_hours"] > 0
    again = subprocess.run([sys.executable, "-m", "synthimg", "--quiet", "demo", "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "0 steps ran" not in again.stderr
    stats = json.loads((tmp_path / "study_quick" / "study_stats.json").read_text())
    assert stats["ran"] == 0  # a rerun reuses every finished stage
