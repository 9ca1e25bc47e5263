"""``synthimg index serve``: answer clip-retrieval's ``/knn-service`` and ``/indices-list`` on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from synthimg.errors import SynthimgError
from synthimg.retrieval.index import LocalIndex


def make_server(indexes: dict[str, LocalIndex], host: str = "127.0.0.1", port: int = 1234) -> ThreadingHTTPServer:
    """A threaded HTTP server over named local indexes (port 0 picks a free port)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/indices-list":
                self._send(200, list(indexes))
            else:
                self._send(404, {"error": f"unknown path {self.path}"})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/knn-service":
                self._send(404, {"error": f"unknown path {self.path}"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, self._answer(body))
            except (ValueError, KeyError, SynthimgError) as err:  # a bad request, or an index kind we lack
                self._send(400, {"error": str(err)})

        def _answer(self, body: dict[str, Any]) -> list[dict[str, Any]]:
            index = indexes[body.get("indice_name") or next(iter(indexes))]
            k = int(body.get("num_images") or 40)
            with lock:  # the text tower is not thread-safe to create lazily
                if body.get("embedding_input") is not None:
                    vec = np.asarray([body["embedding_input"]], dtype=np.float32)
                    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                elif body.get("text"):
                    vec = index.embed_text([body["text"]])
                else:
                    raise ValueError("give text or embedding_input")
                kinds = ("image",) if body.get("modality", "image") == "image" else ("text",)
                hits = index.search(vec, k, kinds=kinds)[0]
            if body.get("use_safety_model"):
                hits = [h for h in hits if not h.get("NSFW") or str(h["NSFW"]).upper() not in ("NSFW", "TRUE", "1")]
            return [{"id": h["row"], "url": h["url"], "caption": h["caption"], "similarity": h["similarity"]} for h in hits]

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
