"""A client for clip-retrieval's back-end HTTP protocol (``POST /knn-service``, ``GET /indices-list``).

The ``clip-retrieval`` package is not a dependency (it pins open-clip-torch<3 and numpy<2);
its protocol is small. The service is probed first: a dead service or a non-JSON answer is
one line naming the URL (the public LAION service answers that way since Dec 2023).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from synthimg.errors import SynthimgError


def endpoints(url: str) -> tuple[str, str]:
    """(knn-service URL, indices-list URL) from either the service URL or its base."""
    base = url.rstrip("/")
    if base.endswith("/knn-service"):
        base = base[: -len("/knn-service")]
    return base + "/knn-service", base + "/indices-list"


def _call(url: str, payload: dict[str, Any] | None, timeout: float) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        raise SynthimgError(f"kNN service {url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SynthimgError(f"kNN service {url} is unreachable ({reason})") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SynthimgError(f"kNN service {url} did not answer JSON (is it a clip-retrieval back end?)") from None


class KnnClient:
    """Query one index of a clip-retrieval compatible service."""

    def __init__(self, url: str, indice_name: str, timeout: float = 60.0, **flags: Any):
        self.service, self.listing = endpoints(url)
        self.indice_name, self.timeout, self.flags = indice_name, timeout, flags
        indices = _call(self.listing, None, timeout)
        if not isinstance(indices, list):
            raise SynthimgError(f"kNN service {self.listing} did not answer a list of indices")
        if indice_name not in indices:
            raise SynthimgError(f"kNN service has no index {indice_name!r}; it offers: {', '.join(map(str, indices))}")

    def query(self, text: str | None = None, embedding: list[float] | None = None, num_images: int = 100,
              modality: str = "image") -> list[dict[str, Any]]:
        payload = {
            "text": text, "image": None, "image_url": None, "embedding_input": embedding, "modality": modality,
            "num_images": num_images, "indice_name": self.indice_name, "num_result_ids": num_images,
            "use_mclip": False, "deduplicate": self.flags.get("deduplicate", True),
            "use_safety_model": self.flags.get("use_safety_model", True),
            "use_violence_detector": self.flags.get("use_violence_detector", True),
            "aesthetic_score": "", "aesthetic_weight": self.flags.get("aesthetic_weight", 0.0),
        }
        answer = _call(self.service, payload, self.timeout)
        if not isinstance(answer, list):
            raise SynthimgError(f"kNN service {self.service} answered {type(answer).__name__}, not a list of results")
        return answer
