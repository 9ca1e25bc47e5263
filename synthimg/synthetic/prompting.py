"""SynCLR-style caption prompts (paper Sec. 3.1): an instruction, 3 in-context examples, the query.

Prompt types are mixed 44% ``c => caption``, 11% ``c, relation => caption`` (10 spatial
relations) and 45% ``c, background => caption``. The in-context examples are synthimg's own
(``data_manifests/captions/incontext.json``); backgrounds come per class or per task domain.
Every choice is drawn from a generator seeded by (seed, class, attempt), so the same seed
gives the same prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError
from synthimg.manifests import manifests
from synthimg.tasks.spec import TaskSpec

INSTRUCTIONS = {
    "c": "Write a one-line description of a photo that shows the object category:",
    "c_relation": "Write a one-line description of a photo that shows the object category in the given spatial relation:",
    "c_background": "Write a one-line description of a photo that shows the object category in the given environment:",
}


def load_incontext() -> dict[str, Any]:
    return json.loads((manifests() / "captions" / "incontext.json").read_text())


def load_backgrounds(task: TaskSpec, path: str | None = None) -> dict[int, list[str]] | list[str]:
    """Backgrounds: a per-class mapping (class name -> list) or a per-domain list."""
    if path:
        if not Path(path).is_file():
            raise SynthimgError(f"backgrounds file not found: {path}")
        data = json.loads(Path(path).read_text())
    else:
        file = manifests() / "tasks" / task.name / "backgrounds.json"
        data = json.loads(file.read_text()) if file.is_file() else {"backgrounds": ["a plain background"]}
    data = data.get("backgrounds", data) if isinstance(data, dict) and "backgrounds" in data else data
    if isinstance(data, list):
        return [str(b) for b in data]
    index = {c: i for i, c in enumerate(task.classnames)}
    unknown = [k for k in data if k not in index]
    if unknown:
        raise SynthimgError(f"backgrounds for unknown {task.name} classes: {', '.join(unknown[:5])}")
    return {index[k]: [str(b) for b in v] for k, v in data.items()}


def concept(task: TaskSpec, class_id: int) -> str:
    """The query concept: the class name, plus the category word for fine-grained tasks (" aircraft")."""
    name = task.classnames[class_id]
    if task.caption_category_word and task.category_word and not name.lower().endswith(task.category_word.lower()):
        return f"{name} {task.category_word}"
    return name


@dataclass
class Prompt:
    class_id: int
    prompt_type: str
    text: str
    example_ids: list[str]
    relation: str | None = None
    background: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PromptBuilder:
    """Builds reproducible prompts for one task."""

    def __init__(self, task: TaskSpec, seed: int, backgrounds: str | None = None):
        self.task, self.seed = task, seed
        data = load_incontext()
        self.examples, self.relations, self.mix = data["examples"], data["relations"], data["mix"]
        self.backgrounds = load_backgrounds(task, backgrounds)
        default = load_backgrounds(task) if backgrounds else self.backgrounds  # an empty LLM list falls back to it
        self._fallback = (default if isinstance(default, list) else []) or ["a plain background"]

    def _backgrounds_for(self, class_id: int) -> list[str]:
        if isinstance(self.backgrounds, dict):
            return self.backgrounds.get(class_id) or self._fallback
        return self.backgrounds or self._fallback

    def build(self, class_id: int, attempt: int) -> Prompt:
        rng = random.Random(f"{self.seed}/{class_id}/{attempt}")
        kind = rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        shots = rng.sample(self.examples[kind], 3)
        query = concept(self.task, class_id)
        relation = rng.choice(self.relations) if kind == "c_relation" else None
        background = rng.choice(self._backgrounds_for(class_id)) if kind == "c_background" else None
        lines = [INSTRUCTIONS[kind], ""]
        for ex in shots:
            lines += [f"{_lhs(kind, ex['concept'], ex.get('relation'), ex.get('background'))} => {ex['caption']}", ""]
        lines.append(f"{_lhs(kind, query, relation, background)} =>")
        return Prompt(class_id, kind, "\n".join(lines), [ex["id"] for ex in shots], relation, background)


def _lhs(kind: str, c: str, relation: str | None, background: str | None) -> str:
    if kind == "c_relation":
        return f"{c}, {relation}"
    if kind == "c_background":
        return f"{c}, {background}"
    return c


def hash_seed(*parts: int) -> int:
    """A 31-bit seed from integers, stable across runs and platforms."""
    import hashlib

    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


def clean_caption(text: str, max_chars: int) -> str | None:
    """Keep only the first line, without control characters; None for an empty or over-long caption."""
    import unicodedata

    first = text.strip().split("\n", 1)[0]
    first = "".join(ch for ch in first if unicodedata.category(ch)[0] != "C" or ch == " ")
    first = " ".join(first.split()).strip('"').strip()
    if not first or len(first) > max_chars:
        return None
    return first
