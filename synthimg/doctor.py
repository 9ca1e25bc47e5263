"""``synthimg doctor``: versions, devices and which optional backends are importable."""

from __future__ import annotations

import importlib.util
import platform
from importlib import metadata
from typing import Any

CORE = [
    "synthimg", "torch", "torchvision", "open_clip_torch", "timm", "diffusers", "transformers",
    "webdataset", "img2dataset", "faiss-cpu", "pydantic", "typer", "rich", "pyarrow", "pandas", "numpy", "pillow",
    "pyahocorasick", "numba",  # the substring scan: its one-pass matcher and its compiled byte loop
]
# module name -> what it enables
OPTIONAL = {
    "vllm": "fast LLM captioning (captions --llm-backend vllm)",
    "submitit": "SLURM executor for studies",
    "wandb": "wandb logging",
    "tensorboard": "TensorBoard logging",
    "clip_benchmark": "CLIP_benchmark templates and result tooling",
    "duckdb": "SQL over manifests and results",
    "matplotlib": "plots in reports",
    "torchmetrics": "FID/KID in reports",
    "xformers": "memory-efficient attention",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything doctor reports, as a JSON-safe dict."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    faiss_gpus = 0
    if importlib.util.find_spec("faiss") is not None:
        import faiss

        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in CORE},
        "device": {
            "cuda_available": cuda,
            "torch_cuda": torch.version.cuda,
            "gpu_count": len(gpus),
            "gpus": gpus,
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
            "nccl_available": bool(torch.distributed.is_available() and torch.distributed.is_nccl_available()),
            "faiss_gpus": faiss_gpus,
        },
        "optional": {mod: importlib.util.find_spec(mod) is not None for mod in OPTIONAL},
    }
