"""``synthimg index serve`` against clip-retrieval's own ``ClipClient`` (its code, from its wheel)."""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from PIL import Image

from synthimg.config import IndexConfig

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"


@pytest.fixture(scope="module")
def clip_client(tmp_path_factory):
    """clip_retrieval/clip_client.py, loaded alone: the package's __init__ pulls in its back end (numpy<2)."""
    folder = tmp_path_factory.mktemp("wheel")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), CLIP_RETRIEVAL],
                         capture_output=True, text=True, timeout=300)
    wheels = list(folder.glob("clip_retrieval-*.whl"))
    if got.returncode or not wheels:
        if os.environ.get("SYNTHIMG_REQUIRE_CLIP_CLIENT"):
            pytest.fail(f"could not download {CLIP_RETRIEVAL}: {got.stderr[-500:]}")
        pytest.skip(f"could not download {CLIP_RETRIEVAL} (no package index)")
    with zipfile.ZipFile(wheels[0]) as z:
        source = folder / "clip_client.py"
        source.write_bytes(z.read("clip_retrieval/clip_client.py"))
    spec = importlib.util.spec_from_file_location("clip_client", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An index with both kinds: images from shards, captions (4 duplicates, 3 flagged) from a parquet."""
    from synthimg.retrieval.index import (
        LocalIndex,
        build_index,
        embed_captions,
        embed_shards,
    )
    from synthimg.retrieval.serve import make_server
    from tests.conftest import write_dataset

    tmp = tmp_path_factory.mktemp("serve")
    write_dataset(tmp / "col", n=20, maxcount=10)
    captions = ["a photo of a cat"] * 4 + [f"a photo of thing number {i}" for i in range(16)]
    nsfw = ["UNLIKELY"] * 20
    for i in (5, 6, 7):
        nsfw[i] = ["NSFW", "UNSURE", "NSFW"][i - 5]
    pd.DataFrame({"url": [f"http://x.invalid/t{i}.jpg" for i in range(20)], "caption": captions,
                  "NSFW": nsfw}).to_parquet(tmp / "captions.parquet")
    cfg = IndexConfig(model="synthimg-tiny-vit", pretrained=None)
    embed_shards(tmp / "col", tmp / "idx", cfg)
    embed_captions(str(tmp / "captions.parquet"), tmp / "idx", cfg)
    build_index(tmp / "idx", cfg)
    server = make_server({"idx": LocalIndex(tmp / "idx")}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image = tmp / "query.jpg"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    yield {"url": f"http://127.0.0.1:{server.server_port}", "image": image, "tmp": tmp}
    server.shutdown()
    server.server_close()


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_clip_client_queries_by_text_image_and_embedding_in_both_modalities(clip_client, served):
    for modality in (clip_client.Modality.IMAGE, clip_client.Modality.TEXT):
        client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="idx", modality=modality,
                                        num_images=5, deduplicate=False, use_safety_model=False)
        by_text = client.query(text="a photo of a cat")
        by_image = client.query(image=str(served["image"]))  # ClipClient sends it base64
        assert len(by_text) == 5 and len(by_image) == 5
        for hit in by_text + by_image:
            assert {"id", "similarity", "url", "caption"} <= set(hit)
        assert [h["similarity"] for h in by_text] == sorted((h["similarity"] for h in by_text), reverse=True)
        kind = "t" if modality is clip_client.Modality.TEXT else "."
        assert all((hit["url"].rsplit("/", 1)[-1].startswith("t")) == (kind == "t") for hit in by_text)
    # embedding_input: the image's own stored embedding finds it first
    from synthimg.retrieval.index import LocalIndex

    index = LocalIndex(served["tmp"] / "idx")
    emb = index.indexes["image"].reconstruct(3).tolist()
    client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="idx", num_images=3)
    hits = client.query(embedding_input=emb)
    assert isinstance(hits, list), hits
    assert hits[0]["id"] == 3 and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_deduplicate_and_safety_follow_clip_back(clip_client, served):
    def captions(**flags):
        client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="idx",
                                        modality=clip_client.Modality.TEXT, num_images=20, **flags)
        return client.query(text="a photo of a cat")

    plain = captions(deduplicate=False, use_safety_model=False)
    assert len(plain) == 20 and sum(h["caption"] == "a photo of a cat" for h in plain) == 4
    dedup = captions(deduplicate=True, use_safety_model=False)
    assert sum(h["caption"] == "a photo of a cat" for h in dedup) == 1  # identical embeddings: one image
    safe = captions(deduplicate=False, use_safety_model=True)
    assert len(safe) == 17 and all(h["NSFW"] == "UNLIKELY" for h in safe)  # NSFW and UNSURE both dropped


def test_num_result_ids_metadata_and_indices_list(served):
    status, hits = _post(served["url"] + "/knn-service", {"text": "a cat", "modality": "image", "num_images": 3,
                                                          "num_result_ids": 8, "indice_name": "idx"})
    assert status == 200 and len(hits) == 8
    assert all("url" in h for h in hits[:3]) and all(set(h) == {"id", "similarity"} for h in hits[3:])
    status, metas = _post(served["url"] + "/metadata", {"ids": [h["id"] for h in hits[3:]], "indice_name": "idx"})
    assert status == 200 and [m["id"] for m in metas] == [h["id"] for h in hits[3:]]
    assert all("url" in m["metadata"] and "caption" in m["metadata"] for m in metas)
    with urllib.request.urlopen(served["url"] + "/indices-list", timeout=10) as resp:
        assert json.loads(resp.read()) == ["idx"]
    status, err = _post(served["url"] + "/knn-service", {"modality": "image", "num_images": 3})
    assert status == 400 and "must fill one of" in err["error"]
    status, err = _post(served["url"] + "/knn-service", {"text": "x", "indice_name": "nope", "num_images": 3})
    assert status == 400 and "unknown indice_name" in err["error"]
    status, err = _post(served["url"] + "/knn-service", {"image": base64.b64encode(b"not an image").decode(),
                                                         "num_images": 3})
    assert status == 400 and "cannot be read" in err["error"]


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (10, 200, 10)).save(buf, format="JPEG")
        blob = buf.getvalue() * (400 if self.path == "/huge.jpg" else 1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def log_message(self, *args):
        pass


def test_image_url_http_file_and_the_loopback_rule(clip_client, served, monkeypatch):
    from synthimg.retrieval import serve

    images = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    try:
        client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="idx", num_images=4,
                                        deduplicate=False)  # the tiny random ViT embeds all images alike
        hits = client.query(image=f"http://127.0.0.1:{images.server_port}/cat.jpg")  # ClipClient: image_url
        assert len(hits) == 4
        monkeypatch.setattr(serve, "MAX_IMAGE_BYTES", 100_000)
        status, err = _post(served["url"] + "/knn-service",
                            {"image_url": f"http://127.0.0.1:{images.server_port}/huge.jpg", "num_images": 2})
        assert status == 400 and "larger than" in err["error"]
    finally:
        images.shutdown()
        images.server_close()
    status, hits = _post(served["url"] + "/knn-service", {"image_url": served["image"].as_uri(), "num_images": 2})
    assert status == 200 and len(hits) == 2  # file:// while bound to loopback
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("") and not serve.is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="not bound to loopback"):
        serve.fetch_image(served["image"].as_uri(), allow_files=False)
    with pytest.raises(ValueError, match="must be http"):
        serve.fetch_image("ftp://127.0.0.1/x.jpg", allow_files=False)


def test_one_nsfw_rule_for_client_and_server():
    from synthimg.retrieval import retrieve, serve
    from synthimg.retrieval.safety import flagged

    assert retrieve.flagged is flagged and serve.flagged is flagged
    import numpy as np

    assert [flagged(v) for v in ("NSFW", "UNSURE", "unsure", "UNLIKELY", None, float("nan"), True, 0)] == \
        [True, True, True, False, False, False, True, False]
    assert flagged(1.0) and flagged(np.float64(1)) and flagged(np.int64(1)) and not flagged(0.0) and flagged("1")
