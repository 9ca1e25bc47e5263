"""The compiled inner loop of the substring pre-filter: one numba pass over a column's bytes.

A module of its own so that :mod:`synthimg.retrieval.substring` imports numba only when a
scan runs. The kernel compiles on first use and is cached beside this file (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * MIX pick the first slot


def key_table(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing hash table of the (nonzero, distinct) 8-byte keys, at most 1/4 full:
    (table keys, 0 where empty; each one's index in ``keys``), probed as :func:`scan` probes it."""
    bits = max(4, int(len(keys) * 4 - 1).bit_length())
    table, where = np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64)
    for index, key in enumerate(keys.astype(np.uint64)):
        slot = ((int(key) * int(MIX)) % (1 << 64)) >> (64 - bits)
        while table[slot]:
            slot = (slot + 1) & ((1 << bits) - 1)
        table[slot], where[slot] = key, index
    return table, where


def _tables() -> tuple[np.ndarray, np.ndarray]:
    lower = np.arange(256, dtype=np.uint8)
    lower[65:91] += 32  # ASCII lower-casing; bytes >= 128 stay as they are
    token = np.zeros(256, np.uint8)  # the lower-cased byte where str.isalnum holds in ASCII, else 0
    token[48:58] = lower[48:58]
    token[65:91] = lower[65:91]
    token[97:123] = lower[97:123]
    return lower, token


_LOWER, _TOKEN = _tables()  # compiled in as constants


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scan(data, offsets, present, table, where, key_lo, key_count, body, body_start, body_len,  # noqa: ANN001
         out_row, out_end, out_pat, python_rows):  # noqa: ANN001, ANN201
    """Matches of the patterns on word boundaries in every present ASCII caption.

    For each token (maximal run of ``[a-z0-9]`` after ASCII lower-casing) its first <= 8
    bytes form a key; a key found in the hash table (:func:`key_table`) is tried against each
    pattern it starts (``key_lo``/``key_count`` into the patterns, sorted by key, of the
    table's ``where``): the pattern's bytes must follow in the same caption and end on a
    boundary. Each match is (row, end byte in ``data``, pattern) in the ``out_*`` arrays; a
    non-ASCII caption only sets ``python_rows``. Returns the number of matches, or -1 when
    the outputs are too small (nothing is written past them).
    """
    count = 0
    mask = len(table) - 1
    bits = 0
    while (1 << bits) < len(table):
        bits += 1
    shift = np.uint64(64 - bits)
    for r in range(len(offsets) - 1):
        if not present[r]:
            continue
        s, e = offsets[r], offsets[r + 1]
        row_first = count
        i = s
        while i < e:
            c = data[i]
            t = _TOKEN[c]
            if t == 0:
                if c >= 128:  # non-ASCII: Unicode case and isalnum are the automaton's to settle
                    python_rows[r] = True
                    count = row_first
                    break
                i += 1
                continue
            key = np.uint64(t)  # the token's first <= 8 bytes, little-endian
            j = i + 1
            while j < e:
                t = _TOKEN[data[j]]
                if t == 0:
                    break
                if j - i < 8:
                    key |= np.uint64(t) << np.uint64(8 * (j - i))
                j += 1
            slot = np.int64((key * MIX) >> shift)
            found = -1
            while table[slot] != 0:
                if table[slot] == key:
                    found = where[slot]
                    break
                slot = (slot + 1) & mask
            if found >= 0:
                for q in range(key_lo[found], key_lo[found] + key_count[found]):
                    end = i + body_len[q]
                    if end > e or (end < e and _TOKEN[data[end]] != 0):
                        continue  # runs past its caption, or ends inside a token
                    b = body_start[q]
                    same = True
                    for m in range(body_len[q]):
                        if _LOWER[data[i + m]] != body[b + m]:
                            same = False
                            break
                    if same:
                        if count == len(out_row):
                            return -1
                        out_row[count], out_end[count], out_pat[count] = r, end, q
                        count += 1
            i = j
    return count
