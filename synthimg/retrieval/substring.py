"""Caption substring retrieval in one pass over LAION-style metadata (paper Sec. 3.2).

All classes' patterns go into one Aho-Corasick automaton (pyahocorasick); each caption is
scanned once, case-insensitively, with matches kept only on word boundaries. The per-task
rules are data (``task.json: substring``), not code branches:

- ``patterns``: templates of the matched text (DTD: "{c} texture", "{c} pattern", ...);
- ``mode: all_tokens``: every token of the name must occur (Cars);
- ``require_word`` + ``ambiguous``: those names also need the word (Flowers: "rose" + "flower");
- ``split_alternatives``: names with "/" or parentheses become their alternatives (ImageNet).

A caption that matches several classes is recorded for each, and the overlap is reported.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.errors import SynthimgError
from synthimg.tasks.spec import TaskSpec


def _alternatives(name: str, split: bool) -> list[str]:
    if not split:
        return [name]
    inner = re.findall(r"\(([^)]*)\)", name)
    outer = re.sub(r"\([^)]*\)", " ", name)
    return [" ".join(a.split()) for a in [*outer.split("/"), *inner] if a.strip()]


class Matcher:
    """One automaton for all classes of a task."""

    def __init__(self, task: TaskSpec):
        import ahocorasick

        rules = task.substring
        self.mode = rules.get("mode", "any")
        ambiguous = {a.lower() for a in rules.get("ambiguous", [])}
        self.require = rules.get("require_word", "").lower()
        self.automaton = ahocorasick.Automaton()
        table: dict[str, list[tuple[int, str]]] = {}
        self.tokens_needed: dict[int, set[str]] = {}
        self.needs_word: set[int] = set()
        for c, name in enumerate(task.classnames):
            name_l = name.lower()
            if self.require and name_l in ambiguous:
                self.needs_word.add(c)
            if self.mode == "all_tokens":
                tokens = set(name_l.split())
                self.tokens_needed[c] = tokens
                for t in tokens:
                    table.setdefault(t, []).append((c, t))
                continue
            for alt in _alternatives(name_l, rules.get("split_alternatives", False)):
                for pattern in rules.get("patterns", ["{c}"]):
                    text = pattern.replace("{c}", alt).lower()
                    table.setdefault(text, []).append((c, text))
        if self.require:
            table.setdefault(self.require, [])
        for text, owners in table.items():
            self.automaton.add_word(text, (text, owners))
        self.automaton.make_automaton()

    def match(self, caption: str) -> list[tuple[int, str]]:
        """(class, matched text) pairs for one caption."""
        low = caption.lower()
        found: dict[int, str] = {}
        tokens: set[str] = set()
        has_word = False
        for end, (text, owners) in self.automaton.iter(low):
            start = end - len(text) + 1
            if (start > 0 and low[start - 1].isalnum()) or (end + 1 < len(low) and low[end + 1].isalnum()):
                continue  # not on word boundaries
            if text == self.require:
                has_word = True
            if self.mode == "all_tokens":
                tokens.add(text)
            for c, t in owners:
                found.setdefault(c, t)
        if self.mode == "all_tokens":
            found = {c: " ".join(sorted(self.tokens_needed[c])) for c in {c for t in tokens for c, _ in self._owners(t)}
                     if self.tokens_needed[c] <= tokens}
        return [(c, t) for c, t in found.items() if c not in self.needs_word or has_word]

    def _owners(self, token: str) -> list[tuple[int, str]]:
        return self.automaton.get(token)[1]


def metadata_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise SynthimgError(f"no metadata parquet matches {pattern}")
    return files


def scan(task: TaskSpec, pattern: str, batch_rows: int = 200_000) -> Iterator[dict[str, Any]]:
    """Yield one candidate row per (caption, matching class)."""
    from synthimg.data.parquet import iter_batches, parquet_file

    matcher = Matcher(task)
    for f in metadata_files(pattern):
        parquet = parquet_file(f)
        names = set(parquet.schema_arrow.names)
        if not {"url", "caption"} <= names:
            raise SynthimgError(f"{f} needs url and caption columns (has {', '.join(sorted(names))})")
        extra = [c for c in ("NSFW", "key", "uid", "id") if c in names]
        id_col = next((c for c in ("key", "uid", "id") if c in names), None)
        batches = iter_batches(f, parquet, batch_size=batch_rows, columns=["url", "caption", *extra])
        for i, batch in enumerate(batches):
            cols = batch.to_pydict()
            ids = cols[id_col] if id_col else None
            nsfw = cols.get("NSFW")
            match = matcher.match
            for j, caption in enumerate(cols["caption"]):
                if not caption:
                    continue
                for c, text in match(caption):
                    yield {"class_id": c, "url": cols["url"][j], "caption": caption, "query": text,
                           "upstream_id": str(ids[j]) if ids else f"{Path(f).name}:{i * batch_rows + j}",
                           "NSFW": nsfw[j] if nsfw else None}


def naive_match(task: TaskSpec, captions: list[str]) -> int:
    """The obvious baseline for benchmarks: one regex per class over every caption."""
    regexes = [re.compile(rf"\b{re.escape(n.lower())}\b") for n in task.classnames]
    return sum(1 for cap in captions for r in regexes if r.search(cap.lower()))


def as_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["class_id", "url", "caption", "query", "upstream_id", "NSFW"])
