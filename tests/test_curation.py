import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from synthimg.config import CurateConfig
from synthimg.curation.decontaminate import EvalSource, decontaminate
from synthimg.curation.filter import filter_top
from synthimg.curation.subsample import subsample
from synthimg.data.manifest import read_keys, read_manifest
from synthimg.data.shards import ShardWriter, finalize, sample_key
from synthimg.errors import SynthimgError
from tests.conftest import CLASSNAMES


def scene(seed: int, size: int = 64) -> Image.Image:
    """A procedural picture: a background and five coloured shapes."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(8, size // 2, 2)
        box = [int(x0), int(y0), int(min(size, x0 + w)), int(min(size, y0 + h))]
        colour = tuple(int(x) for x in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def encode(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _crop(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = im.size
    return im.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))


TRANSFORMS = {
    "exact": lambda im: im,
    "jpeg": lambda im: Image.open(io.BytesIO(encode(im, 40))).convert("RGB"),
    "resize": lambda im: im.resize((41, 41)),
    "upscale": lambda im: im.resize((128, 128)),
    "colour": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.1)).enhance(1.2),
    "flip": ImageOps.mirror,
    "crop5_all": lambda im: _crop(im, 0.05, 0.05, 0.05, 0.05).resize((64, 64)),
    "crop10_left": lambda im: _crop(im, 0.1, 0, 0, 0),
    "crop10_all": lambda im: _crop(im, 0.1, 0.1, 0.1, 0.1),
    "crop_uneven": lambda im: _crop(im, 0.08, 0.02, 0.0, 0.07).resize((96, 96)),
    "flip_crop": lambda im: ImageOps.mirror(_crop(im, 0.0, 0.1, 0.06, 0.03)),
}


def write_images(out: Path, images: list[tuple[Image.Image, int]], source: str = "retrieved", start: int = 0) -> list[str]:
    with ShardWriter(out, maxcount=100) as writer:
        for i, (img, label) in enumerate(images):
            writer.write({"__key__": sample_key(start + i), "jpg": encode(img), "cls": label, "txt": "x",
                          "json": {"source": source, "class_id": label, "class_name": CLASSNAMES[label]}})
    finalize(out, CLASSNAMES)
    return [sample_key(start + i) for i in range(len(images))]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """220 evaluation images (CLIP_benchmark layout) and candidates: 11 x 20 transformed copies + 600 unrelated."""
    root = tmp_path_factory.mktemp("planted")
    write_images(root / "eval" / "test", [(scene(i), i % 10) for i in range(20 * len(TRANSFORMS))])
    (root / "eval" / "classnames.txt").write_text("\n".join(CLASSNAMES))
    images, kinds = [], []
    for t, (name, fn) in enumerate(TRANSFORMS.items()):
        for j in range(20):
            images.append((fn(scene(t * 20 + j)), j % 10))
            kinds.append((name, f"test/{sample_key(t * 20 + j)}"))
    for j in range(600):
        images.append((scene(100000 + j), j % 10))
        kinds.append(("unrelated", ""))
    keys = write_images(root / "cands", images)
    return root, dict(zip(keys, kinds))


def test_planted_copies_found_by_phash(planted, tmp_path):
    root, kinds = planted
    cfg = CurateConfig(descriptor="none", contact_pairs=8, workers=0)
    stats = decontaminate(root / "cands", EvalSource(against=root / "eval"), tmp_path, cfg, progress=False)
    dropped = pd.read_parquet(tmp_path / "dropped.parquet")
    assert list(dropped.columns[:4]) == ["key", "match_key", "similarity", "descriptor"]
    caught = {name: 0 for name in TRANSFORMS}
    for row in dropped.itertuples():
        name, truth = kinds[row.key]
        if name != "unrelated":
            assert row.match_key == truth  # matched to the right evaluation image
            caught[name] += 1
    false_pos = sum(kinds[k][0] == "unrelated" for k in dropped["key"])
    # No model: exact, recompressed, resized, recoloured, mirrored and cropped (up to 10% a side) copies
    assert caught == {name: 20 for name in TRANSFORMS}, caught
    assert false_pos / 600 < 0.01
    kept = set(read_keys(tmp_path / "keys.parquet"))
    assert not kept & set(dropped["key"]) and len(kept) + len(dropped) == len(kinds)
    assert stats["per_class"]["airplane"]["candidates"] == 82 and (tmp_path / "contact_sheet.png").is_file()
    manifest = read_manifest(root / "cands")
    assert manifest.set_index("key").loc[dropped["key"], "kept_decontam"].eq(False).all()


def test_clip_descriptor_exact_copies(planted, tmp_path):
    """With random weights the CLIP descriptor only vouches for exact copies (cosine 1)."""
    root, kinds = planted
    cfg = CurateConfig(model="synthimg-tiny-vit", pretrained=None, descriptor="clip", threshold=0.99999,
                       phash=False, contact_pairs=0, workers=0)
    decontaminate(root / "cands", EvalSource(against=root / "eval"), tmp_path, cfg, progress=False)
    scores = pd.read_parquet(tmp_path / "decontam_scores.parquet").set_index("key")
    exact = [k for k, (name, _) in kinds.items() if name == "exact"]
    assert (scores.loc[exact, "desc_sim"] > 0.99999).all()
    assert all(scores.loc[k, "desc_match"] == kinds[k][1] for k in exact)


def _isc_checkpoint(tmp_path: Path) -> Path:
    """Shaped like isc_ft_v107.pth.tar: the DDP state dict, the timm arch and the training argparse.Namespace."""
    import argparse

    import torch

    from synthimg.curation.descriptors import isc_net

    net = isc_net("test_efficientnet")
    path = tmp_path / "isc_ft_v107.pth.tar"
    torch.save({"epoch": 10, "arch": "test_efficientnet",
                "args": argparse.Namespace(input_size=64, arch="test_efficientnet", batch_size=128, gem_p=1.0),
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_isc_descriptor_loads_local_weights(tmp_path):
    from pathlib import PurePosixPath

    import torch

    from synthimg.curation.descriptors import IscDescriptor

    path = _isc_checkpoint(tmp_path)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        torch.load(path, weights_only=True)  # what a plain safe load says
    cfg = CurateConfig(descriptor="isc", isc_weights=str(path))  # backbone and size come from the checkpoint
    desc = IscDescriptor(cfg, "cpu")
    assert (desc.backbone, desc.image_size) == ("test_efficientnet", 64)
    feats = desc(torch.stack([desc.transform(scene(1)), desc.transform(scene(2))]))
    assert feats.shape == (2, 256) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert desc.default_threshold == 0.604169
    with pytest.raises(SynthimgError, match="ISC weights not found"):
        IscDescriptor(cfg.model_copy(update={"isc_weights": str(tmp_path / "nope.pt")}), "cpu")
    # anything else pickled in it is still refused, with one line
    torch.save({"args": PurePosixPath("/etc"), "state_dict": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(SynthimgError, match="cannot load ISC weights"):
        IscDescriptor(cfg.model_copy(update={"isc_weights": str(tmp_path / "other.pth.tar")}), "cpu")


def test_decontaminate_cli_with_isc_weights_and_without_a_model(planted, tmp_path, capsys):
    from synthimg.cli import main

    root, kinds = planted
    ckpt = _isc_checkpoint(tmp_path)
    for extra in (["--descriptor", "isc", "--isc-weights", str(ckpt)], ["--descriptor", "none"]):
        out = tmp_path / extra[1]
        with pytest.raises(SystemExit) as info:
            main(["--quiet", "curate", "decontaminate", "--shards", str(root / "cands"), "--against",
                  str(root / "eval"), "--out", str(out), *extra])
        assert info.value.code == 0, capsys.readouterr().err
        dropped = set(pd.read_parquet(out / "dropped.parquet")["key"])
        planted_keys = {k for k, (name, _) in kinds.items() if name != "unrelated"}
        assert planted_keys <= dropped  # every planted copy, crops and flips included
        stats = json.loads((out / "decontaminate_stats.json").read_text())
        assert stats["descriptor"] == extra[1]
        if extra[1] == "none":  # (random ISC weights match everything: only the loading is tested there)
            assert len(dropped - planted_keys) / 600 < 0.01


def _pool(n_per_class: list[int]) -> pd.DataFrame:
    rows = []
    i = 0
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            rows.append({"key": sample_key(i), "class_id": c})
            i += 1
    return pd.DataFrame(rows)


def test_subsample_exact_stratified_nested_seeded():
    pool = _pool([50, 50, 50, 3, 50])
    small, large = subsample(pool, 20, seed=0), subsample(pool, 120, seed=0)
    assert len(small) == 20 and len(large) == 120 and len(set(large)) == 120
    assert set(small) <= set(large)  # nested across scales
    counts = pool.set_index("key").loc[small, "class_id"].value_counts()
    assert counts[3] == 3 and counts.drop(3).max() - counts.drop(3).min() <= 1  # stratified; the short class runs out
    big = pool.set_index("key").loc[large, "class_id"].value_counts()
    assert big[3] == 3 and big.drop(3).max() - big.drop(3).min() <= 1  # the short class is filled by the others
    assert subsample(pool, 20, seed=0) == small  # deterministic
    assert subsample(pool.sample(frac=1, random_state=1), 20, seed=0) == small  # input order does not matter
    assert subsample(pool, 20, seed=1) != small
    flat = subsample(pool, 20, seed=0, stratified=False)
    assert len(flat) == 20 and set(flat) <= set(subsample(pool, 100, seed=0, stratified=False))
    with pytest.raises(SynthimgError, match="scale 204 is larger than the curated pool of 203"):
        subsample(pool, 204, seed=0)


def test_filter_top_per_class_and_arm_then_cap():
    rows = []
    for arm in ("synthetic", "retrieved"):
        for c in range(2):
            for j in range(10):
                rows.append({"key": f"{arm[0]}{c}{j:02d}", "source": arm, "class_id": c, "class_name": str(c),
                             "clip_score": j / 10 + c})
    df = pd.DataFrame(rows)
    kept = filter_top(df, top=0.3, cap=None)
    assert len(kept) == 12 and kept.groupby(["source", "class_id"]).size().eq(3).all()
    assert set(kept[(kept.source == "retrieved") & (kept.class_id == 0)]["key"]) == {"r007", "r008", "r009"}
    assert len(filter_top(df, top=0.3, cap=2)) == 8
    with pytest.raises(SynthimgError, match="curate score"):
        filter_top(df.drop(columns="clip_score"), 0.3, None)


def test_cli_sequence_feeds_the_loader(planted, tmp_path, capsys):
    import torch

    from synthimg.cli import main
    from synthimg.curation.clip_score import reduce_scores
    from synthimg.data.loader import shard_loader

    root, _ = planted
    cands = root / "cands"

    def run(*argv):
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        assert info.value.code == 0, capsys.readouterr().err

    run("--quiet", "curate", "score", "--shards", str(cands), "--task", "cifar10", "--model", "synthimg-tiny-vit",
        "--pretrained", "none", "--batch-size", "64", "--workers", "0")
    scored = read_manifest(cands)
    assert scored["clip_score"].notna().all() and (scored["clip_score_reduce"] == "max").all()
    stats = json.loads((cands / "_curation" / "score_stats.json").read_text())
    assert stats["newly_scored"] == len(scored)
    run("--quiet", "curate", "score", "--shards", str(cands), "--task", "cifar10", "--model", "synthimg-tiny-vit",
        "--pretrained", "none", "--workers", "0")
    assert json.loads((cands / "_curation" / "score_stats.json").read_text())["newly_scored"] == 0  # cached
    run("curate", "filter", "--shards", str(cands), "--out", str(tmp_path / "f"), "--top", "0.5", "--cap", "30")
    filtered = read_keys(tmp_path / "f" / "keys.parquet")
    assert len(filtered) == 10 * 30
    run("--quiet", "curate", "decontaminate", "--shards", str(cands), "--against", str(root / "eval"),
        "--out", str(tmp_path / "d"), "--keys", str(tmp_path / "f" / "keys.parquet"), "--descriptor", "none",
        "curate.workers=0")
    clean = read_keys(tmp_path / "d" / "keys.parquet")
    assert set(clean) <= set(filtered) and (tmp_path / "d" / "dropped.parquet").is_file()
    run("curate", "subsample", "--shards", str(cands), "--keys", str(tmp_path / "d" / "keys.parquet"),
        "--scales", "50,100", "--seeds", "0,1", "--out", str(tmp_path / "s"))
    subset = read_keys(tmp_path / "s" / "subset_n100_s1.parquet")
    meta = json.loads((tmp_path / "s" / "subsets.json").read_text())
    assert len(subset) == 100 and set(subset) <= set(clean) and len(meta["subsets"]) == 4
    loader = shard_loader(cands, batch_size=32, keys=subset, transform=lambda im: torch.zeros(1))
    assert sorted(k for b in loader for k in b["key"]) == sorted(subset)

    # mean reduction is cos(image, normalised mean template), max is the best single template
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    templates = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    labels = torch.tensor([0, 1, 1, 0])
    best = reduce_scores(image, templates, labels, "max")
    assert torch.allclose(best, torch.stack([(image[i] @ templates[labels[i]].T).max() for i in range(4)]))
    mean = reduce_scores(image, templates, labels, "mean")
    ref = torch.nn.functional.normalize(templates.mean(1), dim=-1)[labels]
    assert torch.allclose(mean, (image * ref).sum(-1), atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_ranks_score_like_one(tmp_path):
    import subprocess
    import sys

    from tests.conftest import scoring_copies

    args, (one, two) = scoring_copies(tmp_path, ("one", "two"))
    args += ["--workers", "1"]
    for folder, launcher in ((one, [sys.executable, "-m", "synthimg"]),
                             (two, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                    "-m", "synthimg"])):
        proc = subprocess.run([*launcher, *args, "--shards", str(folder)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a = read_manifest(one).set_index("key")["clip_score"].sort_index()
    b = read_manifest(two).set_index("key")["clip_score"].sort_index()
    assert len(b) == 40 and b.notna().all()
    assert np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)  # each rank scored its shards; rank 0 merged
