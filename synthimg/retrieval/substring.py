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


class Prefilter:
    """The scan compiled over a whole caption column, leaving Python only the rows it cannot settle.

    A pattern matches on word boundaries, so on an ASCII caption it starts at a token (a maximal
    run of ``[a-z0-9]`` after lower-casing, exactly what ``str.isalnum`` sees there) and ends
    where one ends. One numba pass over the column's bytes (:func:`scan_kernel.scan`), eight
    at a time, finds every token start and its first eight bytes as one integer; a 2^16-bit
    filter and then a small hash table keep the tokens that begin a pattern, and each pattern
    they begin is compared (its first eight bytes as one integer, then byte for byte) and must
    end on a boundary inside its caption. The matches come out in :class:`Matcher`'s order
    (by end, the longest first, each class once per caption), sorted inside the pass.

    Rows go to :class:`Matcher` when these rules do not hold: non-ASCII captions (Unicode case
    and ``isalnum``), patterns that end in a separator (``conv.``), and every candidate row of
    the tasks whose rules look beyond one pattern (``all_tokens``, ``require_word``).
    """

    def __init__(self, matcher: Matcher):
        import numpy as np

        from synthimg.retrieval import scan_kernel

        self.matcher = matcher
        self.kernel = scan_kernel
        texts = list(matcher.automaton.keys())
        self.exact = matcher.mode == "any" and not matcher.require  # are the matches settled here?
        # a pattern must start with an ASCII letter or digit for its first token to find it
        self.usable = all(t.isascii() and t[:1].isalnum() for t in texts)
        patterns = []
        for text in texts if self.usable else []:
            odd = not text[-1:].isalnum()
            body = re.sub(r"[^a-z0-9]+$", "", text) if odd else text  # odd: its tokens make a candidate
            if not re.fullmatch(r"[a-z0-9][ -~]*", body):
                self.usable = False  # upper-case or non-ASCII inside: Matcher scans the task
                break
            head = re.match(r"[a-z0-9]+", body).group()[:8].encode()
            key = int.from_bytes(head.ljust(8, b"\0"), "little")
            patterns.append((key, body.encode(), text, [c for c, _ in matcher.automaton.get(text)[1]], odd))
        patterns.sort(key=lambda q: q[0])
        self.query_texts = [q[2] for q in patterns]
        keys, self.key_lo, self.key_count = np.unique(np.asarray([q[0] for q in patterns], np.uint64),
                                                      return_index=True, return_counts=True)
        self.table, self.where = scan_kernel.key_table(keys)
        self.bits = scan_kernel.key_filter(keys)
        self.body_len = np.asarray([len(q[1]) for q in patterns], np.int64)
        self.body_start = np.cumsum(self.body_len) - self.body_len
        self.body = np.frombuffer(b"".join(q[1] for q in patterns) or b"\0", np.uint8)
        self.n_chars = np.asarray([len(q[2]) for q in patterns], np.int64)
        self.odd = np.asarray([q[4] for q in patterns], bool)
        counts = np.asarray([0] + [len(q[3]) for q in patterns], np.int64)
        self.owner_start = np.cumsum(counts)
        self.owner_class = np.asarray([c for q in patterns for c in q[3]], np.int64)
        self.head, self.head_mask = scan_kernel.heads(self.body, self.body_start, self.body_len)
        self.follow = scan_kernel.follows(self.key_lo, self.key_count, self.body, self.body_start, self.body_len)

    def run(self, captions: Any) -> tuple[Any, Any, Any, list[int]]:
        """Matches of one Arrow string column: (row, class, pattern index) arrays in Matcher's
        order, and the rows left to :class:`Matcher` (whose matches are not in the arrays)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        col = captions.combine_chunks() if isinstance(captions, pa.ChunkedArray) else captions
        if pa.types.is_dictionary(col.type):  # a pandas category column, read back
            col = col.dictionary_decode()
        if pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        if not pa.types.is_string(col.type):
            raise SynthimgError(f"captions must be strings, not {col.type}")
        rows = len(col)
        empty = np.zeros(0, np.int64)
        # a null slot may hold bytes: it never matches, as in Matcher's scan
        present = pc.fill_null(pc.greater(pc.binary_length(col), 0), False).to_numpy(zero_copy_only=False)
        if not self.usable:
            return empty, empty, empty, np.flatnonzero(present).tolist()
        offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + rows + 1]
        data = np.frombuffer(col.buffers()[2], np.uint8) if col.buffers()[2] is not None else np.zeros(1, np.uint8)
        first, last = int(offsets[0]), int(offsets[-1])
        scratch = self.kernel.scratch()
        words = scratch.words(data, first, last)
        offs = scratch.get("offs", rows + 2, np.int64)  # from 0, with a sentinel past the end
        np.subtract(offsets, first, out=offs[:-1])
        offs[-1] = 1 << 62
        python_rows = scratch.get("python_rows", rows, np.bool_)
        size = scratch.output_size(rows)
        while True:  # the outputs grow until every match fits (one pass in practice)
            python_rows[:] = False
            out_row, out_class, out_pat = (scratch.get(name, size, np.int64) for name in ("row", "class", "pat"))
            count = self.kernel.scan(words, offs, present, self.bits, self.table, self.where,
                                     self.key_lo, self.key_count, self.body, self.body_start, self.body_len,
                                     self.follow, self.n_chars, self.odd, self.head, self.head_mask, self.owner_start,
                                     self.owner_class, out_row, out_class, out_pat, python_rows, *scratch.candidates())
            if count >= 0:
                break
            size *= 4
            scratch.grew_to(size)
        out_row, out_class, out_pat = out_row[:count], out_class[:count], out_pat[:count]
        if not self.exact:
            python_rows[out_row] = True
            return empty, empty, empty, np.flatnonzero(python_rows).tolist()
        keep = ~python_rows[out_row]  # the rows Matcher settles, whole
        return out_row[keep], out_class[keep], out_pat[keep], np.flatnonzero(python_rows).tolist()


def _columns(f: str, parquet: Any) -> tuple[list[str], str | None]:
    names = set(parquet.schema_arrow.names)
    if not {"url", "caption"} <= names:
        raise SynthimgError(f"{f} needs url and caption columns (has {', '.join(sorted(names))})")
    extra = [c for c in ("NSFW", "key", "uid", "id") if c in names]
    return extra, next((c for c in ("key", "uid", "id") if c in names), None)


def scan_tables(task: TaskSpec, pattern: str, batch_rows: int = 200_000, threads: bool = True) -> Iterator[Any]:
    """One Arrow table of matches per parquet batch (``class_id``, ``url``, ``caption``, ``query``,
    ``upstream_id``, ``NSFW``): the matches of :func:`scan_python`, in its order, computed by
    :class:`Prefilter` with Python only on the rows it cannot settle. ``threads=False`` decodes
    the parquet on the calling thread only (benchmarks per core)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from synthimg.data.parquet import iter_batches, parquet_file

    matcher = Matcher(task)
    pre = Prefilter(matcher)
    queries = pa.array(pre.query_texts, pa.string())
    for f in metadata_files(pattern):
        parquet = parquet_file(f)
        extra, id_col = _columns(f, parquet)
        batches = iter_batches(f, parquet, batch_size=batch_rows, columns=["url", "caption", *extra], use_threads=threads)
        done = 0
        for batch in batches:
            caps = batch.column("caption")
            rows, classes, query_idx, slow = pre.run(caps)
            query = queries.take(pa.array(query_idx, pa.int64()))
            if slow:  # the rows Python settles, merged back in row order
                slow_caps = caps.take(pa.array(slow, pa.int64())).to_pylist()
                settled = [(r, c, text) for r, cap in zip(slow, slow_caps) for c, text in matcher.match(cap)]
                rows = np.concatenate([rows, np.asarray([m[0] for m in settled], np.int64)])
                classes = np.concatenate([classes, np.asarray([m[1] for m in settled], np.int64)])
                query = pa.concat_arrays([query, pa.array([m[2] for m in settled], pa.string())])
                order = np.argsort(rows, kind="stable")
                rows, classes, query = rows[order], classes[order], query.take(pa.array(order))
            take = pa.array(rows, pa.int64())
            if id_col:  # str() of each value, exactly as scan_python writes it
                ids = pa.array([str(v) for v in batch.column(id_col).take(take).to_pylist()], pa.string())
            else:
                position = pc.cast(pc.add(take, done), pa.string())  # the row's place in its file
                ids = pc.binary_join_element_wise(f"{Path(f).name}:", position, "")
            nsfw = batch.column("NSFW").take(take) if "NSFW" in extra else pa.nulls(len(rows))
            yield pa.table({"class_id": pa.array(classes, pa.int64()), "url": batch.column("url").take(take),
                            "caption": caps.take(take), "query": query,
                            "upstream_id": ids, "NSFW": nsfw})
            done += batch.num_rows


def scan(task: TaskSpec, pattern: str, batch_rows: int = 200_000, threads: bool = True) -> Iterator[dict[str, Any]]:
    """Yield one candidate row per (caption, matching class), in metadata order (vectorised)."""
    for table in scan_tables(task, pattern, batch_rows, threads):
        yield from table.to_pylist()


def scan_python(task: TaskSpec, pattern: str, batch_rows: int = 200_000, threads: bool = True) -> Iterator[dict[str, Any]]:
    """The one-pass scan with :class:`Matcher` on every caption: the reference :func:`scan` is held to."""
    from synthimg.data.parquet import iter_batches, parquet_file

    matcher = Matcher(task)
    for f in metadata_files(pattern):
        parquet = parquet_file(f)
        extra, id_col = _columns(f, parquet)
        batches = iter_batches(f, parquet, batch_size=batch_rows, columns=["url", "caption", *extra], use_threads=threads)
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
