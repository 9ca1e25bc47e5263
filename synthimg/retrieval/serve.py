"""``synthimg index serve``: clip-retrieval's back-end protocol (``clip_back.py``) over local indexes.

Endpoints as clip back has them: ``POST /knn-service``, ``POST /metadata``,
``GET /indices-list``. A ``/knn-service`` body is what clip-retrieval's ``ClipClient`` sends:
one of ``text``, ``image`` (base64), ``image_url`` or ``embedding_input``; ``modality``
(``image`` or ``text``: which index to search), ``num_images``, ``num_result_ids``,
``deduplicate`` and ``use_safety_model``. The answer is clip back's: the first
``num_images`` results carry their metadata columns plus ``id`` and ``similarity``, the
rest up to ``num_result_ids`` only ``id`` and ``similarity``.

Differences, by design: the safety filter is the metadata's NSFW column under the one rule of
``safety.flagged`` (clip back runs a safety model); there are no aesthetic embeddings or
multilingual CLIP (``use_mclip`` is an error); a bad request answers 400 with ``{"error"}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from synthimg.errors import SynthimgError
from synthimg.retrieval.index import LocalIndex
from synthimg.retrieval.safety import flagged

DEDUP_THRESHOLD = 0.94  # clip back's: results whose embeddings are this close are one image
URL_TIMEOUT = 10.0
MAX_IMAGE_BYTES = 20 * 2**20
MAX_BODY_BYTES = 64 * 2**20


def is_loopback(host: str) -> bool:
    """True when the bind address only accepts this machine's connections."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_image(url: str, allow_files: bool, timeout: float = URL_TIMEOUT, cap: int | None = None) -> bytes:
    """The bytes behind ``image_url``: http(s) with a timeout and a size cap; ``file://`` only if allowed."""
    cap = cap or MAX_IMAGE_BYTES
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        if not allow_files:
            raise ValueError("file:// image_url is refused: the server is not bound to loopback")
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise ValueError(f"no file at {url}")
        if path.stat().st_size > cap:
            raise ValueError(f"{url} is larger than {cap} bytes")
        return path.read_bytes()
    if scheme not in ("http", "https"):
        raise ValueError(f"image_url must be http(s){' or file://' if allow_files else ''}, not {scheme or 'empty'}")
    request = urllib.request.Request(url, headers={"User-Agent": "synthimg-index-serve"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            blob = resp.read(cap + 1)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not fetch {url}: {getattr(err, 'reason', err)}") from None
    if len(blob) > cap:
        raise ValueError(f"{url} is larger than {cap} bytes")
    return blob


def duplicates(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> set[int]:
    """Positions to drop as clip back does: in each group of results linked by cosine ≥ threshold,
    all but the best-ranked (the connected components of the range-search graph)."""
    import faiss
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(embeddings)
    if n < 2:
        return set()
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    lims, _, ids = flat.range_search(emb, threshold)
    lims, ids = lims.astype(np.int64), ids.astype(np.int64)
    rows = np.repeat(np.arange(n), np.diff(lims))
    graph = coo_matrix((np.ones(len(ids)), (rows, ids)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first: dict[int, int] = {}
    for pos, label in enumerate(labels):
        first.setdefault(int(label), pos)
    return {pos for pos, label in enumerate(labels) if first[int(label)] != pos}


def _clean(value: Any) -> Any:
    """A metadata value as JSON (numpy scalars, bytes, NaN -> None), as clip back's meta_to_dict."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


class KnnBackend:
    """What the HTTP handler calls: clip back's query semantics over named local indexes."""

    def __init__(self, indexes: dict[str, LocalIndex], allow_files: bool):
        self.indexes, self.allow_files = indexes, allow_files
        self.lock = threading.Lock()  # the model is created lazily and is not thread-safe

    def _index(self, name: str | None) -> LocalIndex:
        if name is None:
            return next(iter(self.indexes.values()))
        if name not in self.indexes:
            raise ValueError(f"unknown indice_name {name!r}; this server has: {', '.join(self.indexes)}")
        return self.indexes[name]

    def query_vector(self, index: LocalIndex, body: dict[str, Any]) -> np.ndarray:
        if body.get("use_mclip"):
            raise ValueError("this server has no multilingual CLIP (use_mclip)")
        text, image, image_url = body.get("text"), body.get("image"), body.get("image_url")
        embedding = body.get("embedding_input")
        if text:
            with self.lock:
                return index.embed_text([str(text)])
        if image or image_url:
            from PIL import Image, UnidentifiedImageError

            try:  # fetched and decoded outside the lock: a slow URL never holds up other queries
                blob = base64.b64decode(image, validate=False) if image else fetch_image(str(image_url),
                                                                                          self.allow_files)
                picture = Image.open(io.BytesIO(blob))
                picture.load()
            except (binascii.Error, UnidentifiedImageError, OSError) as err:
                raise ValueError(f"the query image cannot be read ({err})") from None
            with self.lock:
                return index.embed_images([picture])
        if embedding is not None:
            vec = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
            if vec.shape[1] != index.indexes[next(iter(index.indexes))].d:
                raise ValueError(f"embedding_input has {vec.shape[1]} dimensions, the index "
                                 f"{index.indexes[next(iter(index.indexes))].d}")
            return vec / max(float(np.linalg.norm(vec)), 1e-12)
        raise ValueError("must fill one of text, image, image_url and embedding_input")

    def knn(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        index = self._index(body.get("indice_name"))
        modality = body.get("modality", "image")
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be image or text, not {modality!r}")
        num_images = int(body.get("num_images", 40))
        num_result_ids = max(int(body.get("num_result_ids") or num_images), num_images)
        vector = self.query_vector(index, body)
        sims, ids, emb = index.search_and_reconstruct(vector, modality, num_result_ids)
        drop = duplicates(emb) if body.get("deduplicate", False) else set()
        rows = index.rows(modality, ids.tolist())
        if body.get("use_safety_model", False):
            drop |= {pos for pos, row in enumerate(rows) if flagged(row.get("NSFW"))}
        results, seen = [], set()
        for pos, (sim, i) in enumerate(zip(sims, ids)):
            if pos in drop or int(i) in seen:
                continue
            seen.add(int(i))
            item = {k: _clean(v) for k, v in rows[pos].items()} if len(results) < num_images else {}
            item.update(id=int(i), similarity=float(sim))
            results.append(item)
        return results

    def metadata(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids = [int(i) for i in body.get("ids") or []]
        index = self._index(body.get("indice_name"))
        kind = body.get("modality", "image")  # ours may keep the caption index's rows apart
        rows = index.rows(kind if kind in index.metadata else "image", ids)
        return [{"id": i, "metadata": {k: _clean(v) for k, v in row.items()}} for i, row in zip(ids, rows)]


def make_server(indexes: dict[str, LocalIndex], host: str = "127.0.0.1", port: int = 1234) -> ThreadingHTTPServer:
    """A threaded HTTP server over named local indexes (port 0 picks a free port).

    ``file://`` image URLs are read only while bound to loopback, so that a server opened to a
    cluster cannot be made to read its own disk.
    """
    backend = KnnBackend(indexes, allow_files=is_loopback(host))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/indices-list":
                self._send(200, list(indexes))
            else:
                self._send(404, {"error": f"unknown path {self.path}"})

        def do_POST(self) -> None:
            route = {"/knn-service": backend.knn, "/metadata": backend.metadata}.get(self.path.rstrip("/"))
            if route is None:
                self._send(404, {"error": f"unknown path {self.path}"})
                return
            try:
                size = int(self.headers.get("Content-Length", 0))
                if size > MAX_BODY_BYTES:
                    raise ValueError(f"request body over {MAX_BODY_BYTES} bytes")
                body = json.loads(self.rfile.read(size) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the request body must be a JSON object")
                self._send(200, route(body))
            except (ValueError, TypeError, KeyError, SynthimgError) as err:  # a bad request, or an index kind we lack
                self._send(400, {"error": str(err).strip("'\"")})

        def _send(self, code: int, data: Any) -> None:
            blob = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)
