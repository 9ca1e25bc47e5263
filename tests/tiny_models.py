"""Tiny real models built from configs and saved to local folders (no hub access, ever).

They load back through the same ``from_pretrained`` paths that real users take with
Llama or SD 1.5.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "a photo of a small plane flying over the sea at dusk",
    "a red car parked on a quiet street in the rain",
    "a yellow flower in a garden with soft morning light",
    "an old aircraft on the runway under a cloudy sky",
    "a dog running on the beach next to the waves",
] * 20


def tiny_causal_lm(folder: Path) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    return folder


def clip_tokenizer_files(folder: Path, words: list[str]) -> Path:
    """vocab.json and merges.txt for a word-level CLIPTokenizer (every word a single token)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789")):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder
