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
    """The scan vectorised over a whole caption column, leaving Python only the rows it cannot settle.

    A pattern matches on word boundaries, so on an ASCII caption it starts and ends with whole
    tokens (maximal runs of ``[a-z0-9]`` after lower-casing, exactly what ``str.isalnum`` sees
    there). The column's bytes are cut into pieces, tokens and the separators between them,
    with numpy; one Arrow hash lookup gives every piece its id in the patterns' vocabulary; a
    pattern matches where its pieces follow one another in one caption. The matches come out
    in :class:`Matcher`'s order (by end, the longest first, each class once per caption).

    Rows go to :class:`Matcher` when the vectorised rules do not hold: non-ASCII captions
    (Unicode case and ``isalnum``), patterns that end in a separator (``conv.``), and every
    candidate row of the tasks whose rules look beyond one pattern (``all_tokens``, ``require_word``).
    """

    def __init__(self, matcher: Matcher):
        import numpy as np
        import pyarrow as pa

        self.matcher = matcher
        texts = list(matcher.automaton.keys())
        self.exact = matcher.mode == "any" and not matcher.require  # are the matches settled here?
        # a pattern must start with an ASCII letter or digit for its first token to find it
        self.usable = all(t.isascii() and t[:1].isalnum() for t in texts)
        split = []
        for text in texts:
            pieces = re.findall(r"[a-z0-9]+|[^a-z0-9]+", text)
            odd = not text[-1:].isalnum()
            if odd:  # ends in a separator: its tokens make the row a candidate, Matcher decides
                pieces = pieces[:-1]
            if pieces:  # one with no letter or digit has made the task unusable here (Matcher scans it)
                split.append((pieces, text, [c for c, _ in matcher.automaton.get(text)[1]], odd))
        # the pieces that start a pattern get the lowest ids, so one comparison finds the candidates
        vocab: dict[str, int] = {}
        for pieces, *_ in split:
            vocab.setdefault(pieces[0], len(vocab))
        self.n_first = len(vocab)
        for pieces, *_ in split:
            for x in pieces:
                vocab.setdefault(x, len(vocab))
        patterns = [([vocab[x] for x in pieces], text, owners, odd) for pieces, text, owners, odd in split]
        patterns.sort(key=lambda q: q[0][0] if q[0] else -1)
        self.vocab = pa.array(list(vocab), pa.string())
        width = max((len(q[0]) for q in patterns), default=1)
        self.seq = np.full((len(patterns), width), -2, np.int64)
        for i, (ids, *_rest) in enumerate(patterns):
            self.seq[i, : len(ids)] = ids
        self.seq_len = np.asarray([len(q[0]) for q in patterns], np.int64)
        self.n_chars = np.asarray([len(q[1]) for q in patterns], np.int64)
        self.odd = np.asarray([q[3] for q in patterns], bool)
        self.query_texts = [q[1] for q in patterns]
        counts = np.asarray([0] + [len(q[2]) for q in patterns], np.int64)
        self.owner_start = np.cumsum(counts)
        self.owner_class = np.asarray([c for q in patterns for c in q[2]], np.int64)
        first = self.seq[:, 0]
        # patterns by first piece id; index 0 stands for "not in the vocabulary" (id -1)
        self.first_start = np.searchsorted(first, np.arange(-1, len(vocab) + 1))
        self.count_by_id = np.diff(self.first_start)[1:]  # patterns whose first piece is each id
        self.lo_by_id = self.first_start[1 : len(vocab) + 1]  # and where they start in self.seq

    def run(self, captions: Any) -> tuple[Any, Any, Any, list[int]]:
        """Matches of one Arrow string column: (row, class, pattern index) arrays in scan order,
        and the rows left to :class:`Matcher` (whose matches are not in the arrays)."""
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
        present = pc.fill_null(pc.greater(pc.binary_length(col), 0), False).to_numpy(zero_copy_only=False)
        if not self.usable:
            return empty, empty, empty, np.flatnonzero(present).tolist()
        ascii_ = pc.fill_null(pc.string_is_ascii(col), True).to_numpy(zero_copy_only=False)
        python_rows = present & ~ascii_
        # ASCII lower-casing: the rows it would get wrong (non-ASCII) are Matcher's anyway, and
        # their bytes >= 128 are separators here, so they cut no ASCII row's tokens differently
        low = pc.ascii_lower(col)
        offsets = np.frombuffer(low.buffers()[1], np.int32)[low.offset : low.offset + rows + 1]
        data = np.frombuffer(low.buffers()[2], np.uint8) if low.buffers()[2] is not None else np.zeros(0, np.uint8)
        data = data[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
        if len(data) == 0:
            return empty, empty, empty, np.flatnonzero(python_rows).tolist()
        is_tok = np.less(data - np.uint8(97), 26) | np.less(data - np.uint8(48), 10)
        # pieces: maximal runs of token or separator bytes, never across two captions
        cut = np.zeros(len(data) + 1, bool)
        np.not_equal(is_tok[1:], is_tok[:-1], out=cut[1:-1])
        cut[offsets] = True
        bounds = np.flatnonzero(cut).astype(np.int32)
        pieces = pa.StringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(data))
        ids = pc.fill_null(pc.index_in(pieces, value_set=self.vocab), -1).to_numpy(zero_copy_only=False)
        # each piece's row: rows start at cuts; empty rows share a cut, the last of them owns it
        row_starts = np.searchsorted(bounds, offsets[:-1])
        piece_row = np.repeat(np.arange(rows, dtype=np.int32), np.diff(np.append(row_starts, len(ids))))
        # candidate (piece, pattern) pairs: the piece is the pattern's first; then check the rest
        pos = np.flatnonzero(ids.view(np.uint32) < self.n_first)  # -1 (not in the vocabulary) is 2**32 - 1
        first_ids = ids[pos]
        n, lo = self.count_by_id[first_ids], self.lo_by_id[first_ids]
        total = int(n.sum())
        which = np.repeat(lo, n) + (np.arange(total) - np.repeat(np.cumsum(n) - n, n))
        pos = np.repeat(pos, n)
        start_row = piece_row[pos]
        last = len(ids) - 1
        matched_pos, matched_q, matched_row = [], [], []
        for j in range(1, self.seq.shape[1] + 1):
            finished = self.seq_len[which] == j
            matched_pos.append(pos[finished])
            matched_q.append(which[finished])
            matched_row.append(start_row[finished])
            pos, which, start_row = pos[~finished], which[~finished], start_row[~finished]
            if j == self.seq.shape[1] or not len(pos):
                break
            nxt = np.minimum(pos + j, last)
            ok = (ids[nxt] == self.seq[which, j]) & (piece_row[nxt] == start_row) & (pos + j <= last)
            pos, which, start_row = pos[ok], which[ok], start_row[ok]
        pos, which, match_row = np.concatenate(matched_pos), np.concatenate(matched_q), np.concatenate(matched_row)
        if not self.exact:
            python_rows[match_row] = True
            return empty, empty, empty, np.flatnonzero(python_rows & present).tolist()
        python_rows[match_row[self.odd[which]]] = True
        python_rows &= present  # a null slot may hold bytes: it never matches, as in Matcher's scan
        keep = present[match_row] & ~python_rows[match_row]
        pos, which, match_row = pos[keep], which[keep], match_row[keep]
        # Matcher's order: by end piece, the longest pattern first; then every owner class, once per row
        order = np.lexsort((-self.n_chars[which], pos + self.seq_len[which]))
        which, match_row = which[order], match_row[order]
        n_own = self.owner_start[which + 1] - self.owner_start[which]
        slot = np.repeat(self.owner_start[which], n_own) + (np.arange(int(n_own.sum())) - np.repeat(np.cumsum(n_own) - n_own, n_own))
        m_rows, m_pat, m_class = np.repeat(match_row, n_own), np.repeat(which, n_own), self.owner_class[slot]
        _, first = np.unique(m_rows * (int(self.owner_class.max(initial=0)) + 1) + m_class, return_index=True)
        first.sort()
        return m_rows[first], m_class[first], m_pat[first], np.flatnonzero(python_rows).tolist()


def _columns(f: str, parquet: Any) -> tuple[list[str], str | None]:
    names = set(parquet.schema_arrow.names)
    if not {"url", "caption"} <= names:
        raise SynthimgError(f"{f} needs url and caption columns (has {', '.join(sorted(names))})")
    extra = [c for c in ("NSFW", "key", "uid", "id") if c in names]
    return extra, next((c for c in ("key", "uid", "id") if c in names), None)


def scan_tables(task: TaskSpec, pattern: str, batch_rows: int = 200_000) -> Iterator[Any]:
    """One Arrow table of matches per parquet batch (``class_id``, ``url``, ``caption``, ``query``,
    ``upstream_id``, ``NSFW``): the matches of :func:`scan_python`, in its order, computed by
    :class:`Prefilter` with Python only on the rows it cannot settle."""
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
        batches = iter_batches(f, parquet, batch_size=batch_rows, columns=["url", "caption", *extra])
        done = 0
        for batch in batches:
            caps = batch.column("caption")
            rows, classes, query_idx, slow = pre.run(caps)
            q_text = queries.take(pa.array(query_idx, pa.int64())).to_pylist()
            rows, classes = rows.tolist(), classes.tolist()
            if slow:  # the rows Python settles, merged back in row order
                slow_caps = caps.take(pa.array(slow, pa.int64())).to_pylist()
                extra_rows, extra_cls, extra_q = [], [], []
                for r, cap in zip(slow, slow_caps):
                    for c, text in matcher.match(cap):
                        extra_rows.append(r)
                        extra_cls.append(c)
                        extra_q.append(text)
                rows, classes, q_text = rows + extra_rows, classes + extra_cls, q_text + extra_q
                order = np.argsort(np.asarray(rows, np.int64), kind="stable").tolist()
                rows = [rows[i] for i in order]
                classes = [classes[i] for i in order]
                q_text = [q_text[i] for i in order]
            take = pa.array(rows, pa.int64())
            if id_col:  # str() of each value, exactly as scan_python writes it
                ids = pa.array([str(v) for v in batch.column(id_col).take(take).to_pylist()], pa.string())
            else:
                position = pc.cast(pc.add(take, done), pa.string())  # the row's place in its file
                ids = pc.binary_join_element_wise(f"{Path(f).name}:", position, "")
            nsfw = batch.column("NSFW").take(take) if "NSFW" in extra else pa.nulls(len(rows))
            yield pa.table({"class_id": pa.array(classes, pa.int64()), "url": batch.column("url").take(take),
                            "caption": caps.take(take), "query": pa.array(q_text, pa.string()),
                            "upstream_id": ids, "NSFW": nsfw})
            done += batch.num_rows


def scan(task: TaskSpec, pattern: str, batch_rows: int = 200_000) -> Iterator[dict[str, Any]]:
    """Yield one candidate row per (caption, matching class), in metadata order (vectorised)."""
    for table in scan_tables(task, pattern, batch_rows):
        yield from table.to_pylist()


def scan_python(task: TaskSpec, pattern: str, batch_rows: int = 200_000) -> Iterator[dict[str, Any]]:
    """The one-pass scan with :class:`Matcher` on every caption: the reference :func:`scan` is held to."""
    from synthimg.data.parquet import iter_batches, parquet_file

    matcher = Matcher(task)
    for f in metadata_files(pattern):
        parquet = parquet_file(f)
        extra, id_col = _columns(f, parquet)
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
