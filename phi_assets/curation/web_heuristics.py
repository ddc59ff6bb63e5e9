"""The web rules of the heuristic filters (``heuristics.py``): for each family (Gopher quality, Gopher
repetition, C4, FineWeb) its feature columns and its checks over them. The n-gram repetition counts
are in ``ngram_repetition.py``."""

from __future__ import annotations

import numpy as np
import polars as pl

from phi_assets.curation.filter_config import (
    C4_CITATION,
    C4_POLICY_SUBSTRINGS,
    C4_SENTENCE_BREAK,
    INLINE_SPACE,
    LINE_BREAK,
    TERMINAL_AT_END,
    WORD_CHAR,
    WebFilterConfig,
)
from phi_assets.curation.heuristic_checks import (
    Check,
    above,
    below,
    between,
    col,
    n_tokens,
    ratio,
    rounded,
    with_tokens,
)
from phi_assets.curation.ngram_repetition import ngram_features

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def gopher_quality_checks(cfg: WebFilterConfig) -> list[Check | None]:
    sym = cfg.gopher_max_symbol_word_ratio
    return [
        between("gopher_word_count", col("g_words"), cfg.gopher_min_words, cfg.gopher_max_words, "words",
                integer=True),
        between("gopher_mean_word_length", ratio("g_word_chars", "g_words"), cfg.gopher_min_mean_word_length,
                cfg.gopher_max_mean_word_length, "mean_word_length"),
        above("gopher_hash_ratio", ratio("g_hashes", "g_tokens"), sym, "hashes/words"),
        above("gopher_ellipsis_ratio", ratio("g_ellipses", "g_tokens"), sym, "ellipses/words"),
        above("gopher_bullet_lines_ratio", ratio("g_bullet_lines", "g_lines"),
              cfg.gopher_max_bullet_lines_ratio, "bullet_lines/lines"),
        above("gopher_ellipsis_lines_ratio", ratio("g_ellipsis_lines", "g_lines"),
              cfg.gopher_max_ellipsis_lines_ratio, "ellipsis_lines/lines"),
        below("gopher_alpha_words_ratio", ratio("g_alpha", "g_alpha_of"), cfg.gopher_min_alpha_words_ratio,
              "alpha_words/words"),
        None if cfg.gopher_min_stop_words is None else (
            "gopher_stop_words", col("g_stop") < cfg.gopher_min_stop_words,
            pl.format(f"distinct_stop_words={{}} < {cfg.gopher_min_stop_words}", col("g_stop"))),
    ]


def repetition_checks(cfg: WebFilterConfig) -> list[Check | None]:
    out: list[Check | None] = [
        ("gopher_rep_empty", col("r_empty"), pl.lit("no non-whitespace character")),
        above("gopher_rep_dup_para_frac", ratio("r_dup_paras", "r_paras"), cfg.rep_max_dup_para_frac,
              "dup_paragraphs/paragraphs"),
        above("gopher_rep_dup_para_char_frac", ratio("r_dup_para_chars", "r_chars"),
              cfg.rep_max_dup_para_char_frac, "dup_paragraph_chars/chars"),
        above("gopher_rep_dup_line_frac", ratio("r_dup_lines", "r_lines"), cfg.rep_max_dup_line_frac,
              "dup_lines/lines"),
        above("gopher_rep_dup_line_char_frac", ratio("r_dup_line_chars", "r_chars"),
              cfg.rep_max_dup_line_char_frac, "dup_line_chars/chars"),
    ]
    for n, frac in cfg.rep_top_ngram_max_char_frac:
        out.append(above(f"gopher_rep_top_{n}gram", ratio(f"r_top{n}", "r_chars"), frac,
                         f"top_{n}gram_chars/chars"))
    for n, frac in cfg.rep_dup_ngram_max_char_frac:
        out.append(above(f"gopher_rep_dup_{n}gram", ratio(f"r_dup{n}", "r_chars"), frac,
                         f"dup_{n}gram_chars/chars"))
    return out


def c4_checks(cfg: WebFilterConfig) -> list[Check | None]:
    out: list[Check | None] = []
    if cfg.c4_lorem_ipsum:
        out.append(("c4_lorem_ipsum", col("c4_lorem_line") > 0,
                    pl.format("'lorem ipsum' on kept line {}", col("c4_lorem_line"))))
    if cfg.c4_curly_bracket:
        out.append(("c4_curly_bracket", col("c4_curly_line") > 0,
                    pl.format("curly bracket on kept line {}", col("c4_curly_line"))))
    if cfg.c4_min_sentences is not None:
        out.append(("c4_min_sentences", col("c4_sentences") < cfg.c4_min_sentences,
                    pl.format(f"sentences={{}} < {cfg.c4_min_sentences} after the line rules "
                              "(kept {} of {} lines)", col("c4_sentences"), col("c4_kept"), col("c4_lines"))))
    return out


def fineweb_checks(cfg: WebFilterConfig) -> list[Check | None]:
    punct = ratio("f_punct", "f_lines")
    punct_check = None
    if cfg.fineweb_min_line_punct_ratio is not None:
        fails = punct < cfg.fineweb_min_line_punct_ratio
        if cfg.fineweb_line_punct_exclude_zero:
            fails = fails & (punct > 0)
        detail = pl.format(f"punct_lines/lines={{}} < {cfg.fineweb_min_line_punct_ratio:g}", rounded(punct))
        punct_check = ("fineweb_line_punct_ratio", fails, detail)
    return [
        ("fineweb_empty", col("f_lines") == 0, pl.lit("no non-blank line")),
        punct_check,
        above("fineweb_short_line_ratio", ratio("f_short", "f_lines"), cfg.fineweb_max_short_line_ratio,
              f"lines_<={cfg.fineweb_short_line_length}_chars/lines"),
        above("fineweb_char_dup_ratio", ratio("f_dup_chars", "f_chars"), cfg.fineweb_max_char_dup_ratio,
              "dup_line_chars/chars"),
        above("fineweb_new_line_ratio", ratio("f_newlines", "f_tokens"), cfg.fineweb_max_new_line_ratio,
              "newlines/words"),
    ]


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def gopher_quality_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    work = with_tokens(work)
    text, tok = pl.col("text"), pl.col("_tokens")
    el = pl.element()
    is_word = el.str.contains(WORD_CHAR)
    n_breaks = text.str.count_matches(LINE_BREAK)
    ends_with_break = text.str.contains(f"(?:{LINE_BREAK})\\z")
    return work.with_columns(
        g_tokens=tok.list.len(),
        g_words=tok.list.agg(is_word.sum()),
        g_word_chars=tok.list.agg(el.filter(is_word).str.len_chars().sum()),
        **_alpha_words(text, tok, cfg),
        g_stop=tok.list.set_intersection(pl.lit(list(cfg.gopher_stop_words), dtype=pl.List(pl.String)))
        .list.len(),
        g_hashes=text.str.count_matches("#", literal=True),
        g_ellipses=text.str.count_matches(r"\.\.\.|\u2026"),
        g_lines=pl.when(text.str.len_bytes() == 0).then(0)
        .otherwise(n_breaks + 1 - ends_with_break.cast(pl.UInt32)),
        g_bullet_lines=text.str.count_matches(f"(?:\\A|{LINE_BREAK}){INLINE_SPACE}*[\u2022-]"),
        g_ellipsis_lines=text.str.count_matches(f"(?:\\.\\.\\.|\u2026){INLINE_SPACE}*(?:{LINE_BREAK}|\\z)"),
    )


def _alpha_words(text: pl.Expr, tok: pl.Expr, cfg: WebFilterConfig) -> dict[str, pl.Expr]:
    """Words with a letter, and the words they are counted among."""
    words = text.str.extract_all(r"\S+") if cfg.gopher_alpha_words == "whitespace" else tok
    return {"g_alpha": words.list.agg(pl.element().str.contains(r"\p{L}").sum()),
            "g_alpha_of": words.list.len()}


def _dup_count_and_chars(items: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """Gopher's find_duplicates over the non-empty items: count, repeats, repeated characters."""
    el = pl.element()
    nonempty = el != ""
    dup = ~el.is_first_distinct() & nonempty
    return (items.list.agg(nonempty.sum()), items.list.agg(dup.sum()),
            items.list.agg(el.filter(dup).str.len_chars().sum()))


def gopher_repetition_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    work = with_tokens(work)
    text = pl.col("text")
    # re.split(r"\n{2,}", text.strip()) and re.split("\n+", text), without a regex split: the
    # pieces of a plain split minus the empty ones (paragraph runs of 3+ newlines folded first).
    paras = text.str.strip_chars().str.replace_all(r"\n{3,}", "\n\n").str.split("\n\n")
    lines = text.str.split("\n")
    n_paras, dup_paras, dup_para_chars = _dup_count_and_chars(paras)
    n_lines, dup_lines, dup_line_chars = _dup_count_and_chars(lines)
    starts_nl = text.str.starts_with("\n").cast(pl.UInt32)
    ends_nl = text.str.ends_with("\n").cast(pl.UInt32)
    work = work.with_columns(
        r_chars=text.str.len_chars(),
        r_empty=~text.str.contains(r"\S"),
        r_paras=pl.max_horizontal(n_paras, pl.lit(1, pl.UInt32)),  # "" splits into [""]
        r_dup_paras=dup_paras,
        r_dup_para_chars=dup_para_chars,
        # re.split("\n+", text) has an empty first (last) line when text starts (ends) with "\n"
        r_lines=pl.max_horizontal(n_lines + starts_nl + ends_nl, pl.lit(1, pl.UInt32)),
        r_dup_lines=dup_lines + starts_nl * ends_nl,
        r_dup_line_chars=dup_line_chars,
    )
    # Documents failing a rule before the n-grams are not looked at by the n-gram code.
    early = [c for c in repetition_checks(cfg)[:5] if c is not None]
    failed = work.select(pl.any_horizontal([c[1] for c in early]) if early else pl.lit(False)).to_series()
    feats = ngram_features(work, cfg, failed.to_numpy().copy())
    return work.with_columns(pl.Series(k, v) for k, v in feats.items())


def c4_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    """C4's line loop (TFDS c4_utils.clean_page, datatrove C4QualityFilter) as line-level columns.

    A line survives if it has no over-long word, ends in terminal punctuation (after removing
    citation markers) and has enough words; among survivors "lorem ipsum" or "{" drops the
    page, "javascript" and policy phrases drop the line; the kept lines' sentences are counted.
    """
    split = work.select(pl.col("text").str.replace_all(LINE_BREAK, "\n").str.split("\n").alias("raw"))
    lines = (split.with_columns(d=pl.int_range(pl.len(), dtype=pl.UInt32)).explode("raw")
             .with_columns(ln=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("d")))
    s = pl.col("raw").str.strip_chars()
    line = pl.col("line")
    conds = [pl.lit(True)]
    if cfg.c4_max_word_length is not None:
        m = cfg.c4_max_word_length  # only lines longer than m can hold such a word: test those alone
        long_lines = pl.when(s.str.len_chars() > m).then(s).otherwise(pl.lit(""))
        conds.append(~long_lines.str.contains(f"[^\\s]{{{m + 1}}}"))
    if cfg.c4_drop_no_terminal_punct_lines:
        conds.append(line.str.contains(r"[.?!\"']\z") & ~line.str.ends_with("..."))
    k = cfg.c4_min_words_per_line
    if k is not None and k > 0:  # "at least k words" as one regex search, not a count
        conds.append(s.str.contains(r"\S" if k == 1 else rf"\S(?:\s+\S+){{{k - 2}}}\s+\S"))
    survivors = (lines.with_columns(line=s.str.replace_all(C4_CITATION, "") if cfg.c4_remove_citations else s)
                 .filter(pl.all_horizontal(conds)))

    def has(*phrases: str) -> pl.Expr:
        return line.str.contains_any(list(phrases), ascii_case_insensitive=True)

    false = pl.lit(False)
    lorem = has("lorem ipsum") if cfg.c4_lorem_ipsum else false
    js = has("javascript") if cfg.c4_drop_javascript_lines else false
    curly = ~lorem & ~js & line.str.contains("{", literal=True) if cfg.c4_curly_bracket else false
    policy = has(*C4_POLICY_SUBSTRINGS) if cfg.c4_drop_policy_lines else false
    kept = ~lorem & ~js & ~curly & ~policy
    agg = survivors.group_by("d").agg(
        lorem=pl.col("ln").filter(lorem).min(),
        curly=pl.col("ln").filter(curly).min(),
        sentences=(line.filter(kept).str.count_matches(C4_SENTENCE_BREAK) + 1).sum(),
        kept=kept.sum(),
    )
    out = {name: np.zeros(work.height, dtype=np.int64) for name in ("lorem", "curly", "sentences", "kept")}
    d = agg.get_column("d").to_numpy()
    for name, arr in out.items():
        arr[d] = agg.get_column(name).fill_null(0).to_numpy()
    return work.with_columns(
        c4_lorem_line=out["lorem"], c4_curly_line=out["curly"], c4_sentences=out["sentences"],
        c4_kept=out["kept"], c4_lines=split.get_column("raw").list.len(),
    )


def fineweb_features(work: pl.DataFrame, cfg: WebFilterConfig) -> pl.DataFrame:
    text = pl.col("text")
    lines = (work.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("d"),
                         text.str.split("\n").alias("line"))
             .explode("line"))
    line = pl.col("line")
    nonblank = line.str.contains(r"\S")
    dup = nonblank & ~pl.struct("d", "line").is_first_distinct()
    agg = lines.group_by("d", maintain_order=True).agg(
        f_lines=nonblank.sum(),
        f_punct=(nonblank & line.str.contains(TERMINAL_AT_END)).sum(),
        f_short=(nonblank & (line.str.len_chars() <= cfg.fineweb_short_line_length)).sum(),
        f_dup_chars=line.filter(dup).str.len_chars().sum(),
    )
    newlines = text.str.count_matches("\n", literal=True)
    return work.hstack(agg.drop("d").get_columns()).with_columns(
        f_chars=text.str.len_chars() - newlines,
        f_newlines=newlines,
        f_tokens=n_tokens(work),
    )
