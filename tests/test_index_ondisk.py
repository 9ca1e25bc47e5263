"""index build --embeddings: clip-retrieval's released layout -> IVF with lists on disk, resumable, served by row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from synthimg.config import IndexConfig
from synthimg.errors import SynthimgError
from synthimg.retrieval import index_ondisk
from synthimg.retrieval.index import LocalIndex
from synthimg.retrieval.index_ondisk import build_from_embeddings, footprint

SIZES = [700, 500, 300]  # uneven files, as LAION's last file is
DIM = 16


def released(root, sizes=SIZES, seed=0):
    """Embeddings (float16, as LAION's) and metadata in clip-retrieval's inference layout."""
    rng = np.random.default_rng(seed)
    vectors = []
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors.append(x)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x.astype(np.float16))
        np.save(root / "text_emb" / f"text_emb_{i}.npy", x[:, ::-1].astype(np.float16))
        meta = pd.DataFrame({"url": [f"http://x.invalid/{start + j}" for j in range(n)],
                             "caption": [f"caption {start + j}" for j in range(n)]})
        meta.to_parquet(root / "metadata" / f"metadata_{i}.parquet", row_group_size=128)  # rows read by group
        start += n
    return np.concatenate(vectors)


def cfg(**kw):
    return IndexConfig(model="my-16d-embedder", pretrained=None, factory="IVF8,Flat", train_samples=400,
                       chunk_rows=400, nprobe=8, **kw)


def test_build_serves_the_right_rows_from_lists_on_disk(tmp_path):
    x = released(tmp_path / "emb")
    info = build_from_embeddings(tmp_path / "emb", tmp_path / "idx", cfg(), echo=lambda *_: None)
    assert info["kinds"]["image"]["count"] == sum(SIZES) and info["kinds"]["text"]["count"] == sum(SIZES)
    assert (tmp_path / "idx" / "image.ivfdata").is_file() and not (tmp_path / "idx" / "_build").exists()
    (tmp_path / "idx").rename(tmp_path / "moved")  # the lists are found beside the index, wherever it is
    index = LocalIndex(tmp_path / "moved")
    probe = [3, 700, 1199, 1499]  # rows in each file and at the edges
    hits = index.search(x[probe], 1, ("image",))
    assert [h[0]["url"] for h in hits] == [f"http://x.invalid/{i}" for i in probe]
    assert [h[0]["row"] for h in hits] == probe
    text_hits = index.search(np.ascontiguousarray(x[probe][:, ::-1]), 1, ("text",))  # one metadata for both
    assert [h[0]["url"] for h in text_hits] == [f"http://x.invalid/{i}" for i in probe]
    sims, ids, emb = index.search_and_reconstruct(x[5], "image", 3)  # the service's dedup reads codes back
    assert ids[0] == 5 and emb.shape == (3, DIM)
    assert index.rows("image", [1499, 1500]) == [{"url": "http://x.invalid/1499", "caption": "caption 1499"}, {}]


def test_an_interrupted_build_resumes_to_the_same_index(tmp_path, monkeypatch):
    x = released(tmp_path / "emb")
    build_from_embeddings(tmp_path / "emb", tmp_path / "a", cfg(), echo=lambda *_: None)

    def stop(name):
        if name == "index-part:1":
            raise KeyboardInterrupt

    monkeypatch.setattr(index_ondisk, "pause_point", stop)
    with pytest.raises(KeyboardInterrupt):
        build_from_embeddings(tmp_path / "emb", tmp_path / "b", cfg(), echo=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "b" / "_build" / "image").iterdir()) == [
        "image_plan.json", "part-00000.index", "part-00001.index", "trained.index"]
    monkeypatch.undo()
    with pytest.raises(SynthimgError, match="chunk_rows changed"):  # a resume must not mix two plans
        build_from_embeddings(tmp_path / "emb", tmp_path / "b", cfg().model_copy(update={"chunk_rows": 300}),
                              echo=lambda *_: None)
    lines = []
    build_from_embeddings(tmp_path / "emb", tmp_path / "b", cfg(), echo=lines.append)
    assert not any("training" in line and "image" in line for line in lines)  # the trained index was kept
    a, b = LocalIndex(tmp_path / "a"), LocalIndex(tmp_path / "b")
    qa, qb = a.search(x[:50], 10, ("image",)), b.search(x[:50], 10, ("image",))
    assert [[h["row"] for h in q] for q in qa] == [[h["row"] for h in q] for q in qb]
    assert json.loads((tmp_path / "b" / "info.json").read_text())["ondisk"] is True


def test_rough_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(SynthimgError, match="inference layout"):
        build_from_embeddings(tmp_path, tmp_path / "idx", cfg())
    released(tmp_path / "emb")
    with pytest.raises(SynthimgError, match="needs an IVF factory"):
        build_from_embeddings(tmp_path / "emb", tmp_path / "idx", cfg().model_copy(update={"factory": "Flat"}),
                              echo=lambda *_: None)
    with pytest.raises(SynthimgError, match="embeds 768-d"):  # 16-d vectors named as ViT-L-14's
        build_from_embeddings(tmp_path / "emb", tmp_path / "idx", cfg().model_copy(update={"model": "ViT-L-14"}),
                              echo=lambda *_: None)
    with pytest.raises(SynthimgError, match="only 1,500 training vectors"):
        build_from_embeddings(tmp_path / "emb", tmp_path / "idx3", cfg().model_copy(
            update={"factory": "IVF4096,Flat", "train_samples": 5000}), echo=lambda *_: None)
    pd.DataFrame({"url": ["u"], "caption": ["c"]}).to_parquet(tmp_path / "emb" / "metadata" / "metadata_3.parquet")
    with pytest.raises(SynthimgError, match="do not match"):
        build_from_embeddings(tmp_path / "emb", tmp_path / "idx2", cfg(), echo=lambda *_: None)


def test_footprint_at_laion_scale():
    laion = footprint("IVF16384,PQ64", 2_320_000_000, 768)
    assert laion["ondisk"] and laion["code_size"] == 64
    assert laion["disk_bytes"] == pytest.approx(2.32e9 * 72)  # codes + ids
    assert laion["ram_bytes"] < 100e6  # the quantiser: 16384 x 768 floats
    assert footprint("Flat", 1000, 768)["ram_bytes"] == 1000 * 768 * 4
