import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthimg.config import DownloadConfig, IndexConfig, RetrieveConfig
from synthimg.data.shards import ShardWriter, finalize, sample_key
from synthimg.errors import SynthimgError
from synthimg.retrieval.retrieve import retrieve
from synthimg.retrieval.substring import Matcher
from synthimg.tasks import get_task
from tests.conftest import CLASSNAMES


class _Server:
    """A loopback HTTP server that stops when the test ends."""

    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(handler, data, code=200):
    blob = json.dumps(data).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(blob)))
    handler.end_headers()
    handler.wfile.write(blob)


class FakeKnn(BaseHTTPRequestHandler):
    """kNN back end that, like LAION's, drops ~30% of results (duplicates, unsafe) after its kNN step."""

    def do_GET(self):
        _json(self, ["laion5B-L-14"])

    bodies: list = []  # what the client sent, checked by the test (an assert in here would only kill the thread)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeKnn.bodies.append(body)
        name = body["text"].split(",")[0]
        hits = []
        for i in range(body["num_images"]):
            uid = hashlib.md5(f"{name}/{i}".encode()).hexdigest()[:12]
            if int(uid, 16) % 10 < 3:  # dropped after the kNN step
                continue
            hits.append({"id": uid, "url": f"http://example.invalid/{uid}.jpg", "caption": body["text"],
                         "similarity": 1.0 - i / 1000})
        _json(self, hits)

    def log_message(self, *a):
        pass


def test_knn_service_over_requests_until_the_target(tmp_path):
    server = _Server(FakeKnn)
    try:
        cfg = RetrieveConfig(backend="knn", url=server.url + "/knn-service", per_class=50, k_per_query=20)
        table, stats = retrieve(get_task("fgvc_aircraft"), cfg, tmp_path)
    finally:
        server.close()
    counts = table.groupby("class_id").size()
    assert len(counts) == 100 and counts.min() >= 50
    assert FakeKnn.bodies and all(b["aesthetic_weight"] == 0 and b["indice_name"] == "laion5B-L-14"
                                  for b in FakeKnn.bodies)
    assert not table.duplicated(["class_id", "url"]).any()
    assert {"class_id", "class_name", "url", "caption", "similarity", "query", "backend", "upstream_id"} <= set(table)
    assert stats["returned"] > stats["after_dedup"] and not stats["short_classes"]


class NotJson(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>gone</html>")

    def log_message(self, *a):
        pass


def test_dead_or_broken_service_is_one_line(tmp_path, capsys):
    from synthimg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["retrieve", "--task", "fgvc_aircraft", "--backend", "knn", "--url", "http://127.0.0.1:9/knn-service",
              "--per-class", "5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "http://127.0.0.1:9/indices-list" in err and err.count("\n") == 1
    server = _Server(NotJson)
    try:
        with pytest.raises(SynthimgError, match="did not answer JSON"):
            retrieve(get_task("dtd"), RetrieveConfig(url=server.url, per_class=5), tmp_path)
    finally:
        server.close()


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


class Images(BaseHTTPRequestHandler):
    """Images by number: 7k+1 are 404, 7k+2 corrupt bytes, 7k+3 carry X-Robots-Tag: noai, 7k+4 time out."""

    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
        if n % 7 == 4:
            time.sleep(4)  # longer than download.timeout=3
        if n % 7 == 1:
            self.send_response(404)
            self.end_headers()
            return
        body = b"\xff\xd8 not an image" if n % 7 == 2 else _jpeg(n)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if n % 7 == 3:
            self.send_header("X-Robots-Tag", "noai")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.mark.slow
def test_index_build_local_retrieve_and_quota_download(tmp_path):
    from synthimg.cli import main
    from synthimg.data.manifest import read_manifest

    server = _Server(Images)
    try:
        with ShardWriter(tmp_path / "collection", maxcount=30) as w:
            for i in range(60):
                w.write({"__key__": sample_key(i), "jpg": _jpeg(i), "cls": i % 10, "txt": f"picture {i}",
                         "json": {"source": "upstream", "class_id": i % 10, "class_name": CLASSNAMES[i % 10],
                                  "url": f"{server.url}/img/{i}.jpg"}})
        finalize(tmp_path / "collection", CLASSNAMES)
        # a caption index over other pages of the same site (LAION's caption index covers the same rows)
        pd.DataFrame({"url": [f"{server.url}/img/{i}.jpg" for i in range(60, 120)],
                      "caption": [f"a photo of a {CLASSNAMES[i % 10]}" for i in range(60, 120)]}).to_parquet(
            tmp_path / "captions.parquet")
        for argv in (
            ["index", "build", "--shards", str(tmp_path / "collection"), "--captions", str(tmp_path / "captions.parquet"),
             "--out", str(tmp_path / "index"), "--model", "synthimg-tiny-vit", "--pretrained", "none"],
            ["retrieve", "--task", "cifar10", "--backend", "local", "--index", str(tmp_path / "index"),
             "--per-class", "20", "--k", "20", "--out", str(tmp_path / "cands")],
            ["download", "--candidates", str(tmp_path / "cands" / "candidates.parquet"), "--per-class", "3",
             "--out", str(tmp_path / "dl"), "--processes", "1", "--threads", "4", "download.timeout=3"],
        ):
            with pytest.raises(SystemExit) as info:
                main(["--quiet", *argv])
            assert info.value.code == 0, argv
    finally:
        server.close()
    cands = pd.read_parquet(tmp_path / "cands" / "candidates.parquet")
    assert cands.groupby("class_id")["index"].agg(set).map(lambda s: s == {"image", "text"}).all()
    stats = json.loads((tmp_path / "dl" / "download_stats.json").read_text())
    assert all(n == 3 for n in stats["per_class"].values()) and not stats["shortfall"]
    manifest = read_manifest(tmp_path / "dl", successes_only=False)
    kept = manifest[manifest["status"] == "success"]
    assert kept.groupby("class_id").size().eq(3).all() and len(kept) == 30
    numbers = kept["url"].str.extract(r"/(\d+)\.jpg")[0].astype(int)
    assert not (numbers % 7).isin([1, 2, 3, 4]).any()  # no 404, corrupt, noai or timed-out image kept
    failed = manifest[manifest["status"] != "success"]
    assert len(failed) and failed["error"].str.len().gt(0).all()
    assert {"url", "caption", "query", "similarity", "backend", "sha256"} <= set(kept.columns)
    # only the final shards, the manifest and the stats stay: the round folders would double the disk use
    names = {p.name for p in (tmp_path / "dl").iterdir()}
    assert names == {"_manifest", "manifest.parquet", "sizes.json", "_info.json", "classnames.txt",
                     "download_stats.json", "config.yaml"} | {p.name for p in (tmp_path / "dl").glob("shard-*.tar")}
    assert stats["complete"] and stats["inputs_hash"]
    # a rerun (the image server is gone now) downloads nothing and changes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "dl").glob("*.tar")}
    from synthimg.retrieval.download import download

    download(tmp_path / "cands" / "candidates.parquet", get_task("cifar10"), DownloadConfig(per_class=3, processes=1,
             threads=4, timeout=3), tmp_path / "dl")
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "dl").glob("*.tar")}


def test_index_serve_answers_our_client(tmp_path):
    from synthimg.retrieval.index import LocalIndex, build_index, embed_shards
    from synthimg.retrieval.knn_http import KnnClient
    from synthimg.retrieval.serve import make_server
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "col", n=20, maxcount=10)
    cfg = IndexConfig(model="synthimg-tiny-vit", pretrained=None)
    embed_shards(tmp_path / "col", tmp_path / "idx", cfg)
    build_index(tmp_path / "idx", cfg)
    server = make_server({"idx": LocalIndex(tmp_path / "idx")}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = KnnClient(f"http://127.0.0.1:{server.server_port}", "idx", deduplicate=False)  # tiny ViT: alike
        hits = client.query(text="a photo of a cat", num_images=5)
    finally:
        server.shutdown()
        server.server_close()
    assert len(hits) == 5 and {"url", "caption", "similarity", "id"} <= set(hits[0])
    assert hits[0]["similarity"] >= hits[-1]["similarity"]


def test_substring_rules_per_task():
    cars = Matcher(get_task("stanford_cars"))
    name = get_task("stanford_cars").classnames[0]  # AM General Hummer SUV 2000
    assert [c for c, _ in cars.match("my 2000 am general hummer suv at the beach")] == [0]
    assert cars.match("a hummer suv from 2000") == []  # every token of the name is needed
    dtd = Matcher(get_task("dtd"))
    assert [c for c, _ in dtd.match("A nice BANDED pattern on cloth")] == [0]
    assert dtd.match("banded together") == []
    flowers = Matcher(get_task("flowers102"))
    rose = get_task("flowers102").classnames.index("rose")
    assert rose not in [c for c, _ in flowers.match("rose gold iphone case")]
    assert rose in [c for c, _ in flowers.match("a red rose flower in the garden")]
    assert flowers.match("a red roses bouquet") == []  # word boundaries
    imagenet = Matcher(get_task("imagenet"))
    both = imagenet.match("a tabby cat next to a goldfish bowl")
    assert len(both) >= 2  # one caption, several classes: recorded for each
    del name


def test_substring_backend_end_to_end(tmp_path):
    pd.DataFrame({
        "url": [f"http://x.invalid/{i}" for i in range(6)],
        "caption": ["a banded pattern scarf", "a bumpy texture on stone", "nothing here", "Bumpy Texture close-up", None,
                    "café: a dotted pattern"],  # non-ASCII: settled by the automaton, merged back with its NSFW tag
        "NSFW": ["UNLIKELY", "UNLIKELY", "UNLIKELY", "NSFW", "UNLIKELY", "UNLIKELY"],
    }).to_parquet(tmp_path / "laion.parquet")
    table, stats = retrieve(get_task("dtd"), RetrieveConfig(backend="substring", metadata=str(tmp_path / "*.parquet"),
                                                            per_class=1), tmp_path / "out")
    assert sorted(table["caption"]) == ["a banded pattern scarf", "a bumpy texture on stone", "café: a dotted pattern"]
    assert stats["nsfw_dropped"] == 1 and table["backend"].eq("substring").all()


def test_retrieval_templates_are_the_papers():
    assert [len(get_task(t).retrieval_queries(0)) for t in ("imagenet", "fgvc_aircraft", "stanford_cars", "dtd",
                                                            "flowers102")] == [80, 2, 8, 8, 1]


def _two_index_folder(folder, n=40, dim=16):
    """Image and caption indexes over different urls with the same row numbers; captions match far better."""
    import faiss

    rng = np.random.default_rng(0)
    query = np.zeros(dim, np.float32)
    query[0] = 1.0
    for kind, sim in (("image", 0.3), ("text", 0.85)):
        noise = rng.normal(size=(n, dim)).astype(np.float32)
        noise[:, 0] = 0
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        spread = sim - 0.01 * np.arange(n, dtype=np.float32)[:, None]  # row i: cosine sim - i/100
        vecs = spread * query + np.sqrt(1 - spread**2) * noise
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        faiss.write_index(index, str(folder / f"{kind}.index"))
        meta = folder / ("metadata" if kind == "image" else "metadata_text")
        meta.mkdir(parents=True)
        pd.DataFrame({"url": [f"http://x.invalid/{kind}/{i}.jpg" for i in range(n)],
                      "caption": [f"{kind} {i}" for i in range(n)]}).to_parquet(meta / "0000.parquet")
    (folder / "info.json").write_text(json.dumps({"model": "synthimg-tiny-vit", "pretrained": None}))
    return query


def test_knn_takes_the_union_of_each_indexs_top_k(tmp_path, monkeypatch):
    from synthimg.retrieval.index import LocalIndex

    folder = tmp_path / "idx"
    folder.mkdir()
    query = _two_index_folder(folder)
    monkeypatch.setattr(LocalIndex, "embed_text", lambda self, texts: np.stack([query] * len(texts)))
    k = 5
    table, stats = retrieve(get_task("cifar10"), RetrieveConfig(backend="local", index=str(folder), per_class=2 * k,
                                                                k_per_query=k), tmp_path / "out")
    assert {"index", "rank"} <= set(table.columns)
    for _, g in table.groupby("class_id"):
        # both indexes contribute their full top-k, although every caption cosine beats every image cosine
        assert sorted(g.loc[g["index"] == "image", "url"]) == sorted(f"http://x.invalid/image/{i}.jpg" for i in range(k))
        assert sorted(g.loc[g["index"] == "text", "url"]) == sorted(f"http://x.invalid/text/{i}.jpg" for i in range(k))
        # row i of the image index and row i of the caption index are different hits: no url lost
        assert len(g) == 2 * k and sorted(g["upstream_id"].astype(int)) == sorted(list(range(k)) * 2)
        # best first is by rank, the indexes interleaved: never caption-first by cosine
        assert list(g["index"]) == ["image", "text"] * k and list(g["rank"]) == [r for r in range(k) for _ in (0, 1)]
    assert stats["by_index"] == {"image": 10 * k, "text": 10 * k}


class TwoModalityKnn(BaseHTTPRequestHandler):
    """A clip-retrieval back end with two indexes; its ids are row numbers, so they collide across modalities."""

    asked: list = []

    def do_GET(self):
        _json(self, ["laion5B-L-14"])

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        TwoModalityKnn.asked.append(body["modality"])
        sim = 0.9 if body["modality"] == "text" else 0.3
        _json(self, [{"id": i, "url": f"http://x.invalid/{body['modality']}/{i}.jpg", "caption": "c",
                      "similarity": sim - i / 1000} for i in range(body["num_images"])])

    def log_message(self, *a):
        pass


def test_knn_service_is_asked_once_per_modality(tmp_path):
    server = _Server(TwoModalityKnn)
    TwoModalityKnn.asked = []
    try:
        cfg = RetrieveConfig(backend="knn", url=server.url, per_class=8, k_per_query=4)
        table, _ = retrieve(get_task("flowers102"), cfg, tmp_path)  # Flowers: 1 query per class
    finally:
        server.close()
    assert TwoModalityKnn.asked.count("image") == TwoModalityKnn.asked.count("text") == 102
    counts = table.groupby(["class_id", "index"]).size()
    assert counts.eq(4).all() and len(counts) == 2 * 102
    assert table.groupby("class_id")["url"].nunique().eq(8).all()


def _good(n: int) -> list[int]:
    """Image numbers the Images server answers well (not 7k+1..7k+4)."""
    return [i for i in range(1000) if i % 7 in (0, 5, 6)][:n]


@pytest.mark.slow
def test_download_tops_up_short_classes_resumes_and_keeps_or_drops_rounds(tmp_path, monkeypatch):
    from synthimg.retrieval import download as dl

    server = _Server(Images)
    try:
        good = iter(_good(200))
        rows = [{"class_id": c, "url": f"{server.url}/img/{next(good)}.jpg", "caption": f"c{c}"}
                for c in range(10) for _ in range(2 if c == 0 else 8)]  # class 0 has only 2 images to give
        pd.DataFrame(rows).to_parquet(tmp_path / "cands.parquet")
        cfg = DownloadConfig(per_class=3, total=30, processes=1, threads=4, timeout=3)
        task = get_task("cifar10")
        clean = dl.download(tmp_path / "cands.parquet", task, cfg, tmp_path / "clean")
        # interrupted after every round finished, before the shards: the rounds stay
        real_write = dl._write_shards
        monkeypatch.setattr(dl, "_write_shards", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            dl.download(tmp_path / "cands.parquet", task, cfg.model_copy(update={"keep_rounds": True}), tmp_path / "cut")
        monkeypatch.setattr(dl, "_write_shards", real_write)
    finally:
        server.close()
    # resumed with the image server gone: everything comes from the finished rounds
    resumed = dl.download(tmp_path / "cands.parquet", task, cfg.model_copy(update={"keep_rounds": True}), tmp_path / "cut")
    assert resumed["per_class"] == clean["per_class"] and resumed["kept"] == clean["kept"] == 30
    assert clean["per_class"]["airplane"] == 2 and sorted(clean["per_class"].values())[-2:] == [3, 4]  # made up
    assert not clean["total_shortfall"] and "airplane" in clean["shortfall"]
    assert (tmp_path / "cut" / "_rounds").is_dir() and not (tmp_path / "clean" / "_rounds").exists()
    # other settings never reuse, nor overwrite, a download made with these
    with pytest.raises(SynthimgError, match="rounds of other candidates or settings"):
        dl.download(tmp_path / "cands.parquet", task, cfg.model_copy(update={"per_class": 4, "keep_rounds": True}),
                    tmp_path / "cut")
    with pytest.raises(SynthimgError, match="complete download of other candidates or settings"):
        dl.download(tmp_path / "cands.parquet", task, cfg.model_copy(update={"per_class": 4}), tmp_path / "clean")


def test_index_serve_answers_a_missing_index_kind_with_a_400(tmp_path):
    import urllib.error
    import urllib.request

    from synthimg.retrieval.index import LocalIndex, build_index, embed_shards
    from synthimg.retrieval.serve import make_server
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "col", n=10, maxcount=10)
    cfg = IndexConfig(model="synthimg-tiny-vit", pretrained=None)
    embed_shards(tmp_path / "col", tmp_path / "idx", cfg)
    build_index(tmp_path / "idx", cfg)
    server = make_server({"idx": LocalIndex(tmp_path / "idx")}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = json.dumps({"text": "a cat", "modality": "text", "num_images": 3, "indice_name": "idx"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/knn-service", data=body)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 400 and "no text index" in json.loads(info.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("content", [b"not a parquet file at all", b"PAR1" + b"\0" * 64 + b"PAR1"])
def test_a_corrupt_parquet_input_is_one_line_naming_it(tmp_path, capsys, content):
    from synthimg.cli import main

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(content)
    for argv in (["retrieve", "--task", "dtd", "--backend", "substring", "--metadata", str(bad), "--per-class", "2",
                  "--out", str(tmp_path / "r")],
                 ["download", "--candidates", str(bad), "--task", "dtd", "--per-class", "2", "--out", str(tmp_path / "d")]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1, err
        assert "bad.parquet is not a readable parquet file" in err[0] and "internal error" not in err[0]


def test_vectorised_substring_scan_matches_the_one_pass_matcher(tmp_path):
    """scan (the compiled token-key pass and byte compares, Matcher on the rest) == scan_python, row for row and in order."""
    import random

    from synthimg.retrieval.substring import scan, scan_python

    rng = random.Random(0)
    tricky = ["Great White Shark!!", "great  white shark", "GREAT-WHITE-SHARK", "jack-o'-lantern pic", "café goldfish",
              "Goldfish,goldfish", None, "", "tabby cat and a tiger cat", "İstanbul goldfish", "conv. ram 2012 bmw",
              "snoopy (cartoon beagle) yes", "a rose flower", "banded pattern", "ｇｏｌｄｆｉｓｈ", "goldfish\u00a0bowl",
              "ram", "red fox red wolf", "a-b goldfish-", "programmer", "whooping crane crane"]
    for name in ("imagenet", "dtd", "flowers102", "stanford_cars", "caltech101"):
        task = get_task(name)
        caps = list(tricky)
        for _ in range(600):
            w = rng.choice(task.classnames).lower().replace(" ", rng.choice([" ", "-", "  ", "_", ","]))
            w = w.upper() if rng.random() < 0.3 else w
            caps.append(rng.choice(["", "the ", "x", "a photo of "]) + w
                        + rng.choice(["", " pic", "s", ".", "é", " texture", " Pattern", " flower", " and a goldfish"]))
        rng.shuffle(caps)
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"url": [f"u{i}" for i in range(len(caps))], "caption": caps}).to_parquet(path, row_group_size=150)
        fast, slow = list(scan(task, str(path), batch_rows=100)), list(scan_python(task, str(path), batch_rows=100))
        assert len(slow) > 100, name
        assert fast == slow, name
    # in this order: patterns cut across two captions, tokens longer than the 8-byte key, a
    # pattern that ends the column (its compares must stop at the column's last byte)
    task = get_task("imagenet")
    caps = ["great white", "shark", "gold", "fish", "hippopotamuses", "hippopotamus", "american", "alligator",
            "americanalligator", "x great white shark", "the american alligator"]
    pd.DataFrame({"url": [f"u{i}" for i in range(len(caps))], "caption": caps}).to_parquet(tmp_path / "cut.parquet")
    fast, slow = list(scan(task, str(tmp_path / "cut.parquet"))), list(scan_python(task, str(tmp_path / "cut.parquet")))
    assert fast == slow and [r["caption"] for r in fast] == ["hippopotamus", "x great white shark",
                                                             "the american alligator"]
    # more matches than the outputs first hold (rows + 1024): they grow, and nothing is lost
    caps = ["goldfish tench " * 1500, "a tench", "goldfish"]
    pd.DataFrame({"url": ["u0", "u1", "u2"], "caption": caps}).to_parquet(tmp_path / "many.parquet")
    import pyarrow as pa

    from synthimg.retrieval.substring import Matcher, Prefilter

    rows, classes, _, left = Prefilter(Matcher(task)).run(pa.array(caps))
    assert rows.tolist() == [0, 0, 1, 2] and left == []  # each class once per caption
    fast, slow = list(scan(task, str(tmp_path / "many.parquet"))), list(scan_python(task, str(tmp_path / "many.parquet")))
    assert fast == slow and len(fast) == 4
    # id columns (nulls and floats as str() writes them), a category column, and a null slot holding bytes
    import pyarrow as pa

    from synthimg.retrieval.substring import Matcher, Prefilter

    task = get_task("imagenet")
    caps = ["a goldfish", None, "goldfish bowl", "tench and goldfish"]
    pd.DataFrame({"url": list("abcd"), "caption": pd.Categorical(caps), "key": [1.0, None, 3.5, 4.0]}).to_parquet(
        tmp_path / "ids.parquet")
    fast, slow = list(scan(task, str(tmp_path / "ids.parquet"))), list(scan_python(task, str(tmp_path / "ids.parquet")))
    assert fast == slow and [r["upstream_id"] for r in fast][:1] == ["1.0"]
    data = pa.array(["goldfish"])  # the bytes of a null slot
    hidden = pa.StringArray.from_buffers(1, data.buffers()[1], data.buffers()[2], pa.py_buffer(b"\x00"), 1)
    rows, _, _, slow_rows = Prefilter(Matcher(task)).run(hidden)
    assert len(rows) == 0 and slow_rows == []


def test_compiled_scan_matches_the_one_pass_matcher_on_random_captions_of_every_task(tmp_path):
    """Random glue of class names, letters, digits, punctuation and non-ASCII around 8-byte word
    boundaries: scan == scan_python for every task, at a small and the default batch size."""
    import random

    from synthimg.retrieval.substring import scan, scan_python
    from synthimg.tasks import list_tasks

    rng = random.Random(3)
    for name in list_tasks():
        task = get_task(name)
        pieces = [*"abcxyzABCXYZ0189 -.,'\t", "é", "  ", *task.classnames[:40], *(c.upper() for c in task.classnames[:5]),
                  "red", "great", "flower", "texture", "pattern"]
        caps = [None if rng.random() < 0.03 else
                "".join(rng.choice(pieces) + rng.choice(["", " ", "-"]) for _ in range(rng.randint(0, 9)))
                for _ in range(700)]
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"url": [f"u{i}" for i in range(len(caps))], "caption": caps}).to_parquet(path, row_group_size=333)
        slow = list(scan_python(task, str(path)))
        assert len(slow) > 5, name  # DTD matches need "texture", "pattern"
        for batch_rows in (97, 200_000):
            assert list(scan(task, str(path), batch_rows=batch_rows)) == slow, (name, batch_rows)


@pytest.mark.slow
def test_download_fills_quotas_in_candidate_order_whatever_order_img2dataset_finishes(tmp_path, monkeypatch):
    """img2dataset's threads finish in any order; with over-request the kept images must not depend on it."""
    from synthimg.data.loader import shard_pipeline
    from synthimg.retrieval import download as dl

    files = tmp_path / "files"
    files.mkdir()
    rows = []
    for c in range(10):
        for j in range(6):
            path = files / f"{c}_{j}.jpg"
            path.write_bytes(_jpeg(c * 10 + j))
            rows.append({"class_id": c, "url": path.as_uri(), "caption": f"c{c} {j}"})
    pd.DataFrame(rows).to_parquet(tmp_path / "cands.parquet")
    cfg = DownloadConfig(per_class=2, overrequest=3.0, processes=1, threads=2, timeout=3)
    task = get_task("cifar10")
    real = dl._round_results

    def kept(order: str, out: str) -> list[str]:
        shuffle = (lambda df: df.iloc[::-1]) if order == "reversed" else (lambda df: df)
        monkeypatch.setattr(dl, "_round_results", lambda folder: shuffle(real(folder)).reset_index(drop=True))
        stats = dl.download(tmp_path / "cands.parquet", task, cfg, tmp_path / out)
        assert stats["kept"] == 20
        return [r["text"] for r in shard_pipeline([str(p) for p in sorted((tmp_path / out).glob("*.tar"))])]

    forward, backward = kept("as is", "a"), kept("reversed", "b")
    assert forward == backward
    assert forward == [r["caption"] for r in rows if int(r["caption"].split()[1]) < 2]  # each class's top 2
