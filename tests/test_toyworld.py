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
    CONTEXT,
    SD_FOLDER,
    WEIGHTS,
    Recipe,
    pretrain,
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


def test_eval_sets_load_with_clip_benchmarks_own_builder(small_world):
    from clip_benchmark.datasets.builder import build_wds_dataset

    from synthimg.tasks import get_task

    root = small_world / "eval" / "toy_shapes"
    for split, per in (("train", SMALL.bench_train), ("test", SMALL.bench_test)):
        ds = build_wds_dataset("wds/toy_shapes", transform=lambda im: im.size, split=split, data_dir=str(root))
        rows = list(ds)
        assert len(rows) == per * 10 and {label for _, label in rows} == set(range(10))
        assert all(size == (32, 32) for size, _ in rows)
        assert ds.classes == get_task("toy_shapes").classnames and ds.templates == get_task("toy_shapes").templates


def test_shipped_weights_load_offline_through_the_real_paths():
    import torch
    from diffusers import StableDiffusionPipeline

    from synthimg.models.clip import create_clip

    clip, sd = WEIGHTS / CLIP_FILE, WEIGHTS / SD_FOLDER
    assert clip.is_file() and (sd / "model_index.json").is_file()
    size = clip.stat().st_size + sum(p.stat().st_size for p in sd.rglob("*") if p.is_file())
    assert size <= 25_000_000  # 25 MB, the budget for everything shipped
    bundle = create_clip("synthimg-toy-clip", str(clip))
    with torch.no_grad():
        feats = bundle.model.encode_image(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 64) and torch.isfinite(feats).all()
    pipe = StableDiffusionPipeline.from_pretrained(sd, torch_dtype=torch.float32)
    out = pipe(["a photo of a circle."], num_inference_steps=2, height=32, width=32, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="pil")
    assert out.images[0].size == (32, 32)
    # Like SD's, the pipeline's text encoder is the frozen text tower of the CLIP trained on the same upstream
    texts = ["a photo of a circle.", "small red six-sided shape png"]
    ids = pipe.tokenizer(texts, padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = pipe.text_encoder(ids).pooler_output @ bundle.model.text_projection.float()
        theirs = bundle.model.float().encode_text(bundle.tokenizer(texts))
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_every_caption_and_prompt_fits_the_toy_context(small_world):
    from synthimg.models.clip_text import clip_tokenizer
    from synthimg.tasks import get_task
    from synthimg.toyworld.world import TASKS

    tok = clip_tokenizer(small_world / "tok", CONTEXT)
    captions = list(pd.read_parquet(small_world / "upstream" / "metadata.parquet")["caption"])
    prompts = [p for name in TASKS for c in range(get_task(name).num_classes) for p in get_task(name).prompts(c)]
    longest = max(len(ids) for ids in tok(captions + prompts).input_ids)
    assert longest <= CONTEXT, longest


def _unet_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / SD_FOLDER / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_pretraining_runs_and_an_interrupted_unet_resumes_to_the_same_weights(small_world, tmp_path):
    stats = pretrain(small_world, tmp_path / "a", Recipe.quick(), echo=lambda *_: None)
    assert (tmp_path / "a" / CLIP_FILE).is_file() and (tmp_path / "a" / SD_FOLDER / "unet").is_dir()
    assert stats["clip"]["steps"] == 5 and stats["unet"]["steps"] == 4
    assert not (tmp_path / "a" / SD_FOLDER / "tokenizer" / "tokenizer.json").exists()  # vocab + merges only

    def crash(pipe, step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the step-2 checkpoint
        pretrain(small_world, tmp_path / "b", Recipe.quick(), echo=lambda *_: None, evaluate=crash, eval_every=3)
    assert (tmp_path / "b" / "_unet_checkpoint.pt").is_file()
    lines = []
    pretrain(small_world, tmp_path / "b", Recipe.quick(), echo=lines.append)
    assert "clip: done, kept" in lines and "vae: done, kept" in lines and "unet: resuming after step 2" in lines
    a, b = _unet_tensors(tmp_path / "a"), _unet_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "_unet_checkpoint.pt").exists()

    # a new UNet recipe keeps the finished CLIP and VAE (the VAE is read back from the pipeline folder)
    from dataclasses import replace

    lines = []
    switches = {"unet_text_time": True, "unet_prediction": "v_prediction", "unet_snr_gamma": 5.0}
    pretrain(small_world, tmp_path / "a", replace(Recipe.quick(), unet_steps=3, **switches), echo=lines.append)
    assert "clip: done, kept" in lines and "vae: done, taken from the pipeline folder" in lines
    assert not any(line.startswith("vae step") for line in lines)
    assert "add_embedding.pool.q_proj.weight" in _unet_tensors(tmp_path / "a")  # the pooled caption path
    # the pipeline samples what its UNet was trained to predict
    scheduler_config = json.loads((tmp_path / "a" / SD_FOLDER / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["prediction_type"] == "v_prediction"

    # the fidelity contract on these weights: the three keys, as many real images as generated, same classes
    from synthimg.tasks import get_task
    from synthimg.toyworld.fidelity import fidelity, real_images

    res = fidelity(tmp_path / "a", per_class=2, steps=2, sheet=tmp_path / "sheet.png")
    assert {"accuracy", "chance", "real_accuracy"} <= set(res) and res["chance"] == pytest.approx(0.1)
    assert 0 <= res["accuracy"] <= 1 and res["steps"] == 2 and len(res["per_class"]) == 10
    assert Image.open(tmp_path / "sheet.png").size[1] > 10 * 32
    _, labels = real_images(get_task("toy_shapes"), 2)
    assert sorted(labels) == sorted(c for c in range(10) for _ in range(2))


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "synthimg", "demo", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)  # the default console, as a new user sees it
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = tmp_path / "study_quick" / "report"
    assert (report / "report.html").is_file() and (report / "scaling_toy_shapes.png").is_file()
    console = proc.stdout + proc.stderr
    assert "warning" not in console.lower() and "<|endoftext|>" not in console and "Traceback" not in console
    assert (tmp_path / "demo.log").stat().st_size > 0  # the libraries' output went to the log
    results = proc.stdout.index("Answer on this run")  # the answer comes first, then the tables
    assert results < proc.stdout.index("retrieved − synthetic at equal N") < proc.stdout.index("toy_shapes: test")
    assert "report:" in proc.stdout
    summary = pd.read_csv(report / "summary.csv")
    assert {"synthetic", "retrieved", "retrieved_substring", "target_train", "zeroshot_baseline"} <= set(summary["arm"])
    html = (report / "report.html").read_text()
    assert "planted in the upstream" in html and "decontamination dropped" in html
    assert "retrieved − synthetic" in html and "id='answer'" in html  # the question, answered in the report
    cost = pd.read_csv(report / "cost.csv")
    knn = cost[cost["arm"] == "retrieved"].iloc[0]
    assert knn["data_index_gpu_hours"] > 0 and knn["data_retrieve_gpu_hours"] > 0 and knn["data_score_gpu_hours"] > 0
    assert cost[cost["arm"] == "synthetic"].iloc[0]["data_generate_gpu_hours"] > 0
    again = subprocess.run([sys.executable, "-m", "synthimg", "--quiet", "demo", "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "Answer on this run" in again.stdout
    stats = json.loads((tmp_path / "study_quick" / "study_stats.json").read_text())
    assert stats["ran"] == 0  # a rerun reuses every finished stage
