"""An open_clip text tower as a Hugging Face ``CLIPTextModel`` + ``CLIPTokenizer``, for diffusers pipelines.

Stable Diffusion conditions on a frozen CLIP text encoder trained on its own upstream data.
The toy world's pipeline does the same with the toy CLIP: its text transformer's weights
are copied into ``transformers``' CLIP text model (the same pre-LN architecture, causal
mask and final LayerNorm), and the tokenizer is OpenAI CLIP's BPE
(:mod:`synthimg.models.clip_bpe`), which is what open_clip uses. The pooled output times the
CLIP text projection equals open_clip's ``encode_text`` (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthimg.models.clip_bpe import write_clip_tokenizer_files

BOS, EOS = 49406, 49407  # OpenAI CLIP's <|startoftext|>, <|endoftext|>


def text_config(model: Any) -> Any:
    """The ``CLIPTextConfig`` matching an open_clip model's text tower."""
    import torch
    from transformers import CLIPTextConfig

    block = model.transformer.resblocks[0]
    quick = not isinstance(block.mlp.gelu, torch.nn.GELU)  # open_clip's QuickGELU otherwise
    return CLIPTextConfig(
        vocab_size=model.token_embedding.weight.shape[0], hidden_size=model.token_embedding.weight.shape[1],
        intermediate_size=block.mlp.c_fc.out_features, num_hidden_layers=len(model.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="quick_gelu" if quick else "gelu", layer_norm_eps=block.ln_1.eps,
        projection_dim=model.text_projection.shape[1], bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)


def to_hf_text_model(model: Any) -> Any:
    """A ``CLIPTextModel`` with the weights of ``model``'s text tower (``strict`` load: nothing left over)."""
    from transformers import CLIPTextModel

    sd = model.state_dict()
    hf = CLIPTextModel(text_config(model))
    new = {"embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "embeddings.position_embedding.weight": sd["positional_embedding"],
           "final_layer_norm.weight": sd["ln_final.weight"], "final_layer_norm.bias": sd["ln_final.bias"]}
    for i in range(len(model.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        weights, biases = sd[src + "attn.in_proj_weight"].chunk(3), sd[src + "attn.in_proj_bias"].chunk(3)
        for j, name in enumerate("qkv"):
            new[dst + f"self_attn.{name}_proj.weight"], new[dst + f"self_attn.{name}_proj.bias"] = weights[j], biases[j]
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, b in pairs.items():
            new[dst + f"{b}.weight"], new[dst + f"{b}.bias"] = sd[src + f"{a}.weight"], sd[src + f"{a}.bias"]
    prefix = "text_model." if any(k.startswith("text_model.") for k in hf.state_dict()) else ""  # transformers < 5
    hf.load_state_dict({prefix + k: v for k, v in new.items()}, strict=True)
    return hf.eval()


def clip_tokenizer(folder: str | Path, max_length: int) -> Any:
    """OpenAI CLIP's tokenizer (open_clip's vocabulary) written to ``folder`` and loaded from there."""
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                         pad_token="<|endoftext|>")
