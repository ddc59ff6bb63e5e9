"""The Gopher repetition rules' n-gram counts (top n-gram and duplicate n-gram characters per
document), with numpy over 64-bit hashes of the tokens; ``web_heuristics.py`` turns them into checks."""

from __future__ import annotations

import numpy as np
import polars as pl

from phi_assets.curation.filter_config import WebFilterConfig

_MIX = np.uint64(0x9E3779B97F4A7C15)
_SALT = np.uint64(0xD6E8FEB86659FD93)


def _greedy_dup_chars(pos: np.ndarray, gid: np.ndarray, win: np.ndarray, n: int) -> int:
    """datatrove's find_all_duplicate for one document, visiting only the positions that matter.

    The reference walks every position: at an n-gram already added it counts the n-gram's
    characters and jumps n positions (the skipped ones are not added), else it adds it and steps
    one. ``pos`` (increasing) must hold every position of each n-gram occurring more than once;
    n-grams occurring once are never counted, so leaving out their positions changes nothing.
    ``gid`` are the n-gram ids at ``pos`` and ``win`` their characters.
    """
    added: set[int] = set()
    total, nxt = 0, 0
    for c, g, w in zip(pos.tolist(), gid.tolist(), win.tolist(), strict=True):
        if c < nxt:  # jumped over: not added
            continue
        if g in added:
            total += w
            nxt = c + n
        else:
            added.add(g)
            nxt = c + 1
    return total


def _first_occurrences(codes: np.ndarray) -> np.ndarray:
    """Where each id occurs first (ids are numbered in order of appearance)."""
    if not codes.size:
        return np.zeros(0, dtype=bool)
    running = np.maximum.accumulate(codes)
    return np.r_[True, codes[1:] > running[:-1]]


def _top_ngram_chars(n: int, lens: np.ndarray, doc_start: np.ndarray, cum: np.ndarray, doc: np.ndarray,
                     first_at: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Characters of each document's most common n-gram, times its count (joined with spaces).

    Counter.most_common(1): the highest count, ties to the n-gram seen first; with no repeat at all
    that is the document's first n-gram (count 1).
    """
    val = np.zeros(len(lens))
    has = lens >= n
    val[has] = cum[doc_start[has] + n] - cum[doc_start[has]] + n - 1
    udoc = doc[first_at]
    if udoc.size:
        seg = np.flatnonzero(np.r_[True, udoc[1:] != udoc[:-1]])
        best = np.zeros(len(lens), dtype=np.int64)
        best[udoc[seg]] = np.maximum.reduceat(counts, seg)
        hit = np.flatnonzero((counts == best[udoc]) & (counts > 1))
        hit = hit[np.r_[True, udoc[hit][1:] != udoc[hit][:-1]]] if hit.size else hit
        at = first_at[hit]
        val[udoc[hit]] = counts[hit] * (cum[at + n] - cum[at] + n - 1)  # joined with spaces
    return val


def _dup_chars_upper_bound(n: int, ndocs: int, rep: np.ndarray, doc: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """The counted n-grams are disjoint windows starting at repeats (``rep``), so they lie inside the
    union of the repeats' windows: its characters per document bound the duplicate n-gram characters."""
    val = np.zeros(ndocs)
    if rep.size:
        block = np.flatnonzero(np.r_[True, np.diff(rep) >= n])
        block_end = rep[np.r_[block[1:] - 1, rep.size - 1]] + n
        np.add.at(val, doc[rep[block]], cum[block_end] - cum[rep[block]])
    return val


def _exact_dup_chars(val: np.ndarray, exact: np.ndarray, n: int, live: np.ndarray, codes: np.ndarray,
                     doc: np.ndarray, cum: np.ndarray) -> None:
    """Replace the bound in ``val`` by the exact walk for the documents ``exact``."""
    ldoc = doc[live]
    bounds = np.searchsorted(ldoc, np.stack([exact, exact + 1]))
    for d, lo, hi in zip(exact.tolist(), bounds[0].tolist(), bounds[1].tolist(), strict=True):
        p = live[lo:hi]
        val[d] = _greedy_dup_chars(p, codes[lo:hi], cum[p + n] - cum[p], n)


def ngram_features(work: pl.DataFrame, cfg: WebFilterConfig, failed: np.ndarray) -> dict[str, np.ndarray]:
    """Top n-gram and duplicate n-gram character counts per document (numpy over token hashes).

    An n-gram is a 64-bit polynomial hash of its token hashes, salted with its document number so
    one pass over the concatenated tokens of all documents counts each document separately.
    Work shrinks with n: an (n+1)-gram can only repeat where the n-gram repeats, so each level
    only hashes the positions whose n-gram occurs more than once. ``failed`` marks documents
    already failing an earlier rule (updated here); they are not looked at any more.
    """
    import pandas as pd  # pd.factorize: n-gram ids in order of first occurrence, in one hash pass

    top = dict(cfg.rep_top_ngram_max_char_frac)
    dup = dict(cfg.rep_dup_ngram_max_char_frac)
    wanted = sorted(top.keys() | dup.keys())
    if not wanted:
        return {}
    ndocs = work.height
    tokens = work.get_column("_tokens")
    lens = tokens.list.len().to_numpy().astype(np.int64)
    flat = tokens.explode(empty_as_null=False)
    h = flat.hash(seed=0x51F).to_numpy()
    total = len(h)
    cum = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(flat.str.len_chars().to_numpy(), out=cum[1:])
    ends = np.cumsum(lens)
    doc_start = ends - lens
    doc = np.repeat(np.arange(ndocs, dtype=np.int64), lens)
    remaining = ends[doc] - np.arange(total, dtype=np.int64)  # tokens from here to the document's end
    with np.errstate(over="ignore"):
        salt = (doc.astype(np.uint64) + np.uint64(1)) * _SALT
    chars = np.maximum(work.get_column("r_chars").to_numpy().astype(np.float64), 1.0)
    last_top = max(top, default=0)
    later_dup_limit = {n: min(f for m, f in dup.items() if m >= n) for n in dup}
    safe = np.zeros(ndocs, dtype=bool)  # every later duplicate-n-gram rule is known to pass
    out: dict[str, np.ndarray] = {}
    grams = h.copy()
    with np.errstate(over="ignore"):
        for k in range(1, wanted[0]):
            grams[: total - k] = grams[: total - k] * _MIX + h[k:]
    live = np.flatnonzero(remaining >= wanted[0])  # positions whose n-gram may repeat
    for n in range(wanted[0], wanted[-1] + 1):
        if n > wanted[0]:
            live = live[remaining[live] >= n]
            with np.errstate(over="ignore"):
                grams[live] = grams[live] * _MIX + h[live + n - 1]
        skip = failed | safe if n > last_top else failed
        live = live[~skip[doc[live]]]
        codes, _ = pd.factorize(grams[live] ^ salt[live])
        counts = np.bincount(codes)
        first = _first_occurrences(codes)
        if n in top:
            val = _top_ngram_chars(n, lens, doc_start, cum, doc, live[first], counts)
            out[f"r_top{n}"] = val
            failed |= val / chars > top[n]
        if n in dup:
            # Upper bound first; the exact walk only above the limit.
            val = _dup_chars_upper_bound(n, ndocs, live[~first], doc, cum)
            safe |= val / chars <= later_dup_limit[n]
            exact = np.flatnonzero((val / chars > dup[n]) & ~failed)
            if exact.size:
                _exact_dup_chars(val, exact, n, live, codes, doc, cum)
            out[f"r_dup{n}"] = val
            failed |= val / chars > dup[n]
        live = live[counts[codes] > 1]
    return out
