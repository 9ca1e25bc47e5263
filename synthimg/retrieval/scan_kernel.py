"""The compiled inner loop of the substring pre-filter: one numba pass over a column's bytes.

A module of its own so that :mod:`synthimg.retrieval.substring` imports numba only when a
scan runs. The kernel compiles on first use and is cached beside this file (``cache=True``).

The pass reads the column eight bytes at a time. Each 64-bit word is classified in about
eighteen integer operations (SWAR: which bytes are ASCII letters or digits, the lower-cased
word); with a mask of the bytes that start a caption (from the offsets) that gives the word's
token starts as bits. Each start's token key (its first <= 8 lower-cased bytes) comes from two
neighbouring words by shifts and masks, without a loop over the token's bytes, and goes
through a 2^16-bit filter of the patterns' keys without a branch. Only the starts that pass
(those whose first token begins some pattern) reach the hash table and the pattern compares.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * MIX pick the first slot
FILTER_BITS = 16  # the filter of keys: 2^16 bits, 8 KiB, in L1
CHUNK = 2048  # words per chunk: its filtered starts are settled while its bytes are in cache

_M80 = np.uint64(0x8080808080808080)
_M7F = np.uint64(0x7F7F7F7F7F7F7F7F)
_M20 = np.uint64(0x2020202020202020)
_C1F = np.uint64(0x1F1F1F1F1F1F1F1F)
_C05 = np.uint64(0x0505050505050505)
_C50 = np.uint64(0x5050505050505050)
_C46 = np.uint64(0x4646464646464646)
_TOP = np.uint64(1 << 63)


def _slot(key: int, bits: int) -> int:
    """The top ``bits`` bits of ``key * MIX`` (mod 2^64), as :func:`scan` computes them."""
    return ((int(key) * int(MIX)) % (1 << 64)) >> (64 - bits)


def key_table(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing hash table of the (nonzero, distinct) 8-byte keys, at most 1/4 full:
    (table keys, 0 where empty; each one's index in ``keys``), probed as :func:`scan` probes it."""
    bits = max(4, int(len(keys) * 4 - 1).bit_length())
    table, where = np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64)
    for index, key in enumerate(keys.astype(np.uint64)):
        slot = _slot(key, bits)
        while table[slot]:
            slot = (slot + 1) & ((1 << bits) - 1)
        table[slot], where[slot] = key, index
    return table, where


def key_filter(keys: np.ndarray) -> np.ndarray:
    """The keys as bits of a 2^16-bit filter (64-bit words), as :func:`scan` tests them."""
    bits = np.zeros(1 << (FILTER_BITS - 6), np.uint64)
    for key in keys.astype(np.uint64):
        h = _slot(key, FILTER_BITS)
        bits[h >> 6] |= np.uint64(1) << np.uint64(h & 63)
    return bits


def follows(key_lo: np.ndarray, key_count: np.ndarray, body: np.ndarray, body_start: np.ndarray,
            body_len: np.ndarray) -> np.ndarray:
    """Per key, the byte two places past its token in each pattern it starts (the next token's
    first byte after a one-byte separator) as a bit of a 64-bit mask (byte & 63); all bits
    where some pattern has no such byte in the key's 8-byte window (a one-token pattern, a token
    of 7 or more bytes). A start whose byte there has no bit cannot match any of them."""
    raw = body.tobytes()
    masks = np.zeros(len(key_lo), np.uint64)
    for k, (lo, n) in enumerate(zip(key_lo.tolist(), key_count.tolist())):
        bits = 0
        for q in range(lo, lo + n):
            text = raw[body_start[q] : body_start[q] + body_len[q]]
            t = len(text) - len(text.lstrip(b"abcdefghijklmnopqrstuvwxyz0123456789"))  # its first token
            if t >= 7 or len(text) <= t + 1:
                bits = (1 << 64) - 1
                break
            bits |= 1 << (text[t + 1] & 63)
        masks[k] = bits
    return masks


def heads(body: np.ndarray, body_start: np.ndarray, body_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pattern's first <= 8 bytes as one little-endian integer, and the mask of those bytes."""
    raw = body.tobytes()
    head, mask = np.zeros(len(body_len), np.uint64), np.zeros(len(body_len), np.uint64)
    for q, (start, n) in enumerate(zip(body_start.tolist(), body_len.tolist())):
        first = raw[start : start + min(8, n)]
        head[q], mask[q] = int.from_bytes(first.ljust(8, b"\0"), "little"), (1 << (8 * len(first))) - 1
    return head, mask


class Scratch:
    """Buffers reused from batch to batch and scan to scan (:func:`scratch`, one per thread):
    fresh memory costs a page fault per 4 KiB touched."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._grown = 0  # the output size a batch last needed, when more than its rows + 1024

    def get(self, name: str, size: int, dtype: type) -> np.ndarray:
        """An uninitialised array of ``size`` items, the same memory as last time where it fits."""
        buf = self._buffers.get(name)
        if buf is None or len(buf) < size:
            buf = self._buffers[name] = np.empty(max(size, 2 * len(buf) if buf is not None else size), dtype)
        return buf[:size]

    def words(self, data: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``data[start:stop]`` in 64-bit words, zero-padded with two spare words (the pass reads ahead)."""
        n = stop - start
        words = self.get("words", n // 8 + 3, np.uint64)
        words[n // 8 :] = 0
        words.view(np.uint8)[:n] = data[start:stop]
        return words

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The starts that pass the filter in one chunk: positions, keys, 8-byte windows."""
        size = 8 * CHUNK + 8
        return self.get("cand_pos", size, np.int64), self.get("cand_key", size, np.uint64), self.get("cand_win", size, np.uint64)

    def output_size(self, rows: int) -> int:
        """Where the outputs start for a batch of ``rows``: at least the size the last batch grew to."""
        return max(rows + 1024, self._grown)

    def grew_to(self, size: int) -> None:
        self._grown = size


_LOCAL = threading.local()


def scratch() -> Scratch:
    """This thread's :class:`Scratch`."""
    if not hasattr(_LOCAL, "scratch"):
        _LOCAL.scratch = Scratch()
    return _LOCAL.scratch


def _tables() -> tuple[np.ndarray, np.ndarray]:
    lower = np.arange(256, dtype=np.uint8)
    lower[65:91] += 32  # ASCII lower-casing; bytes >= 128 stay as they are
    token = np.zeros(256, np.uint8)  # the lower-cased byte where str.isalnum holds in ASCII, else 0
    token[48:58] = lower[48:58]
    token[65:91] = lower[65:91]
    token[97:123] = lower[97:123]
    return lower, token


_LOWER, _TOKEN = _tables()  # compiled in as constants


@numba.njit(inline="always")
def _classify(x):  # noqa: ANN001, ANN202
    """(bytes that are ASCII letters or digits, as 0x80 each; the word ASCII-lower-cased; bytes >= 128)."""
    high = x & _M80
    x7 = x & _M7F  # no carries between bytes in the adds below
    t = x7 | _M20
    letter = (t + _C1F) & ~(t + _C05) & _M80  # t in 'a'..'z'
    digit = (x7 + _C50) & ~(x7 + _C46) & _M80  # x7 in '0'..'9'
    return (letter | digit) & ~high, x | (letter >> np.uint64(2)), high


@numba.njit(inline="always")
def _window(lo, hi, shift):  # noqa: ANN001, ANN202
    """The 8 bytes starting ``shift`` bits into ``lo``, continued from ``hi`` (shift < 64)."""
    return (lo >> shift) | ((hi << np.uint64(1)) << (np.uint64(63) - shift))


@numba.njit(inline="always")
def _settle(seg_row, seg_end, seg_len, seg_pat, n, owner_start, owner_class, out_row, out_class, out_pat, count):  # noqa: ANN001, ANN202
    """One caption's matches in Matcher's order (by end, the longest first), each class once:
    appended to the outputs; returns the new count, or -1 when they are full."""
    for a in range(1, n):  # insertion sort: a caption holds few matches
        e, ln, p = seg_end[a], seg_len[a], seg_pat[a]
        b = a - 1
        while b >= 0 and (seg_end[b] > e or (seg_end[b] == e and seg_len[b] < ln)):
            seg_end[b + 1], seg_len[b + 1], seg_pat[b + 1] = seg_end[b], seg_len[b], seg_pat[b]
            b -= 1
        seg_end[b + 1], seg_len[b + 1], seg_pat[b + 1] = e, ln, p
    first = count
    r = seg_row
    for a in range(n):
        p = seg_pat[a]
        for o in range(owner_start[p], owner_start[p + 1]):
            c = owner_class[o]
            seen = False
            for b in range(first, count):
                if out_class[b] == c:
                    seen = True
                    break
            if seen:
                continue
            if count == len(out_row):
                return -1
            out_row[count], out_class[count], out_pat[count] = r, c, p
            count += 1
    return count


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scan(words, offs, present, bits, table, where, key_lo, key_count, body, body_start, body_len,  # noqa: ANN001
         follow, n_chars, odd, head, head_mask, owner_start, owner_class, out_row, out_class, out_pat, python_rows,  # noqa: ANN001
         cand_pos, cand_key, cand_win):  # noqa: ANN001, ANN201
    """Matches of the patterns on word boundaries in every present ASCII caption.

    ``words`` holds the captions' bytes from 0 as :meth:`Scratch.words` gives them (``offs``:
    each caption's start, then the end, then a sentinel >= 2^62); ``cand_*`` are
    :meth:`Scratch.candidates`.
    For each token (a maximal run of ``[a-z0-9]`` after ASCII lower-casing, inside one caption)
    the key is its first <= 8 bytes; a key that passes the filter ``bits`` and is found in
    the hash table (:func:`key_table`) is tried against each pattern it starts (``key_lo``,
    ``key_count`` into the patterns, sorted by key): the pattern's first bytes (``head``)
    against the token's, then the rest byte for byte, and it must end on a boundary inside
    its caption. The outputs get (row, class, pattern) per caption in Matcher's order, each
    class once per caption. A non-ASCII caption, or one that matches an ``odd`` pattern,
    sets ``python_rows`` (its matches are still written: the caller drops them). Returns the
    number of outputs, or -1 when they are too small (nothing is written past them).
    """
    data = words.view(np.uint8)
    count = 0
    mask = len(table) - 1
    nbits = 0
    while (1 << nbits) < len(table):
        nbits += 1
    shift = np.uint64(64 - nbits)
    fshift = np.uint64(64 - FILTER_BITS)
    nrows = len(offs) - 2
    nbytes = offs[nrows]
    nw = (nbytes + 7) // 8
    seg_end = np.empty(64, np.int64)
    seg_len = np.empty(64, np.int64)
    seg_pat = np.empty(64, np.int64)
    n_seg, seg_row = 0, -1
    nb = 0  # the next caption start not yet turned into a bit
    flagged_end = 0  # the end of the last caption found to hold a byte >= 128
    r = 0  # the caption of the start being settled
    x = words[0]
    a, low, high = _classify(x)
    starts = np.uint64(0)
    while offs[nb] < 8:
        starts |= np.uint64(0x80) << np.uint64(8 * offs[nb])
        nb += 1
    inside = a & ~starts  # letters or digits that continue a token from the byte before
    prev_a = np.uint64(0)
    k0 = 0
    while k0 < nw:
        k1 = min(k0 + CHUNK, nw)
        nc = 0
        for k in range(k0, k1):
            x_next = words[k + 1]
            a_next, low_next, high_next = _classify(x_next)
            starts_next = np.uint64(0)
            limit = 8 * (k + 2)
            while offs[nb] < limit:
                starts_next |= np.uint64(0x80) << np.uint64(8 * offs[nb] - 64 * (k + 1))
                nb += 1
            inside_next = a_next & ~starts_next
            if high != 0:  # bytes >= 128: Unicode case and isalnum are Matcher's to settle
                for o in range(8):
                    p = 8 * k + o
                    if (x >> np.uint64(8 * o + 7)) & np.uint64(1) and p >= flagged_end:
                        lo, hi = 0, nrows  # the caption of byte p: the last lo with offs[lo] <= p
                        while hi - lo > 1:
                            mid = (lo + hi) // 2
                            if offs[mid] <= p:
                                lo = mid
                            else:
                                hi = mid
                        flagged_end = offs[lo + 1]  # its other bytes >= 128 need no search
                        if present[lo]:
                            python_rows[lo] = True
            s = a & (~((a << np.uint64(8)) | (prev_a >> np.uint64(56))) | starts)  # token starts
            base = 8 * k
            while True:  # one start without a branch, then any more
                valid = np.uint64(1) if s != 0 else np.uint64(0)
                tz = trailing_zeros(s | _TOP)
                sh = np.uint64(tz - 7)
                cont = _window(inside, inside_next, sh) | np.uint64(0x80)
                win = _window(low, low_next, sh)
                ends = ~cont & _M80
                key = win & (((ends & (np.uint64(0) - ends)) >> np.uint64(7)) - np.uint64(1))
                h = (key * MIX) >> fshift
                passes = (bits[h >> np.uint64(6)] >> (h & np.uint64(63))) & np.uint64(1)
                cand_pos[nc], cand_key[nc], cand_win[nc] = base + (tz >> 3), key, win
                nc += np.int64(valid & passes)
                s = s & (s - np.uint64(1))
                if s == 0:
                    break
            prev_a = a
            x, a, low, high, starts, inside = x_next, a_next, low_next, high_next, starts_next, inside_next
        for c in range(nc):
            key = cand_key[c]
            slot = np.int64((key * MIX) >> shift)
            found = -1
            while table[slot] != 0:
                if table[slot] == key:
                    found = where[slot]
                    break
                slot = (slot + 1) & mask
            if found < 0:
                continue
            win, i = cand_win[c], cand_pos[c]
            t = (np.int64(64 - leading_zeros(key)) + 7) >> 3  # the token's length, up to 8
            if t < 7 and not (follow[found] >> ((win >> np.uint64(8 * t + 8)) & np.uint64(63))) & np.uint64(1):
                continue  # the byte after its separator starts none of its patterns' next tokens
            for q in range(key_lo[found], key_lo[found] + key_count[found]):
                if (win & head_mask[q]) != head[q]:
                    continue
                while offs[r + 1] <= i:
                    r += 1
                if not present[r]:
                    break
                e = offs[r + 1]
                end = i + body_len[q]
                if end > e or (end < e and _TOKEN[data[end]] != 0):
                    continue  # runs past its caption, or ends inside a token
                b = body_start[q]
                same = True
                for m in range(8, body_len[q]):
                    if _LOWER[data[i + m]] != body[b + m]:
                        same = False
                        break
                if not same:
                    continue
                if odd[q]:
                    python_rows[r] = True
                if r != seg_row:
                    if n_seg:
                        count = _settle(seg_row, seg_end, seg_len, seg_pat, n_seg, owner_start, owner_class,
                                        out_row, out_class, out_pat, count)
                        if count < 0:
                            return -1
                    seg_row, n_seg = r, 0
                if n_seg == len(seg_end):  # a caption with very many matches
                    seg_end = np.concatenate((seg_end, np.empty(len(seg_end), np.int64)))
                    seg_len = np.concatenate((seg_len, np.empty(len(seg_len), np.int64)))
                    seg_pat = np.concatenate((seg_pat, np.empty(len(seg_pat), np.int64)))
                seg_end[n_seg], seg_len[n_seg], seg_pat[n_seg] = end, n_chars[q], q
                n_seg += 1
        k0 = k1
    if n_seg:
        count = _settle(seg_row, seg_end, seg_len, seg_pat, n_seg, owner_start, owner_class,
                        out_row, out_class, out_pat, count)
    return count
