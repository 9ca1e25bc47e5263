"""LLM backends for captions, chosen by name: ``transformers``, ``vllm`` and ``openai`` (HTTP).

All three take a list of prompts and return one completion per prompt, sampled with the
same parameters (the paper: temperature 0.8, top-p 0.9, at most 100 new tokens).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from synthimg.config import CaptionsConfig
from synthimg.errors import SynthimgError
from synthimg.plugins import LLM
from synthimg.registry import Registry

BACKENDS = Registry("LLM backend")
register = BACKENDS.register



def create_llm(cfg: CaptionsConfig) -> LLM:
    name = cfg.llm_backend or ("openai" if cfg.llm_url else "transformers")
    if name != "openai" and not cfg.llm:
        raise SynthimgError("--method llm needs --llm ID_OR_PATH (or --llm-url for an OpenAI-compatible server)")
    return BACKENDS[name](cfg)


@register("transformers")
class TransformersLLM:
    """Any causal LM by hub ID or local path; batched sampling, bf16 on GPU, left padding."""

    def __init__(self, cfg: CaptionsConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from synthimg.dist import device

        self.cfg, self.device = cfg, device()
        if cfg.llm.startswith((".", "/", "~")) and not Path(cfg.llm).expanduser().exists():
            raise SynthimgError(f"LLM not found: {cfg.llm}")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
            cfg.dtype, torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.llm, padding_side="left")
            self.model = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=dtype).to(self.device).eval()
        except OSError as err:
            raise SynthimgError(f"cannot load LLM {cfg.llm!r}: {str(err).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.id, self.tokens = cfg.llm, 0

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        import torch

        torch.manual_seed(seed)
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch, do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:]
        self.tokens += int((new != self.tokenizer.pad_token_id).sum())
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


@register("vllm")
class VllmLLM:
    """vLLM (the ``[llm]`` extra) for throughput; per-request seeds keep it reproducible."""

    def __init__(self, cfg: CaptionsConfig):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise SynthimgError("the vllm backend needs vLLM: pip install 'synthimg[llm]'") from None
        self.cfg, self.params_cls = cfg, SamplingParams
        self.engine = LLM(model=cfg.llm, seed=cfg.seed)
        self.id, self.tokens = cfg.llm, 0

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        params = [self.params_cls(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_tokens=self.cfg.max_new_tokens, seed=seed + i) for i in range(len(prompts))]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        self.tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return [o.outputs[0].text for o in outputs]


@register("openai")
class OpenAILLM:
    """Any OpenAI-compatible completions endpoint (vLLM serve, TGI, llama.cpp server, ...)."""

    def __init__(self, cfg: CaptionsConfig):
        if not cfg.llm_url:
            raise SynthimgError("the openai backend needs --llm-url")
        self.cfg = cfg
        self.url = cfg.llm_url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.model = cfg.llm or self._first_model()
        self.id, self.tokens = f"{self.model}@{cfg.llm_url}", 0

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        import urllib.error
        import urllib.request

        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        for attempt in range(3):
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                raise SynthimgError(f"LLM endpoint {self.url}{path} answered HTTP {err.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == 2:
                    raise SynthimgError(f"LLM endpoint {self.url} is unreachable ({err})") from None
                time.sleep(1 + attempt)
            except json.JSONDecodeError:
                raise SynthimgError(f"LLM endpoint {self.url}{path} did not answer JSON") from None
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        models = self._request("/models").get("data", [])
        if not models:
            raise SynthimgError(f"LLM endpoint {self.url} lists no models; pass --llm NAME")
        return models[0]["id"]

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        answer = self._request("/completions", {
            "model": self.model, "prompt": prompts, "temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_new_tokens, "seed": seed, "n": 1,
        })
        self.tokens += int((answer.get("usage") or {}).get("completion_tokens", 0))
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise SynthimgError(f"LLM endpoint {self.url} returned {len(choices)} completions for {len(prompts)} prompts")
        return [c.get("text", "") for c in choices]
