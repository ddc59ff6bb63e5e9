"""Heuristic quality filters for web text: every rule at its threshold, rule order, funnel, configs
(the code rules are in test_code_heuristics.py)."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import fields, replace

import polars as pl
import pytest

from phi_assets.curation import web_heuristics as web
from phi_assets.curation.heuristic_checks import with_tokens
from phi_assets.curation.heuristics import (
    FAMILIES,
    CodeFilterConfig,
    WebFilterConfig,
    filter_documents,
    funnel,
    merge_funnels,
    rule_names,
)
from tests.support.files import PROSE
from tests.support.heuristics import frame, reasons

# Every numeric threshold of a family, so one rule can be tested alone.
GOPHER_Q = ["gopher_min_words", "gopher_max_words", "gopher_min_mean_word_length",
            "gopher_max_mean_word_length", "gopher_max_symbol_word_ratio", "gopher_max_bullet_lines_ratio",
            "gopher_max_ellipsis_lines_ratio", "gopher_min_alpha_words_ratio", "gopher_min_stop_words"]
GOPHER_R = ["rep_max_dup_para_frac", "rep_max_dup_para_char_frac", "rep_max_dup_line_frac",
            "rep_max_dup_line_char_frac"]
FINEWEB = ["fineweb_min_line_punct_ratio", "fineweb_max_short_line_ratio", "fineweb_max_char_dup_ratio",
           "fineweb_max_new_line_ratio"]


def solo(family: str, **keep) -> WebFilterConfig:
    """Only ``family``, with only the thresholds named in ``keep`` (given or default) switched on."""
    off = {"gopher_quality": GOPHER_Q, "gopher_repetition": GOPHER_R, "fineweb": FINEWEB}.get(family, [])
    values: dict = {f: (f == family) for f in FAMILIES}
    values.update({name: None for name in off})
    if family == "gopher_repetition":
        values.update(rep_top_ngram_max_char_frac=(), rep_dup_ngram_max_char_frac=())
    for name, value in keep.items():
        values[name] = getattr(WebFilterConfig(), name) if value is ... else value
    return WebFilterConfig(**values)


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def uniq(n: int, width: int = 6) -> list[str]:
    """n distinct lowercase words of the same length."""
    out = []
    for i in range(n):
        w, k = "", i
        for _ in range(width):
            w, k = w + "abcdefghijklmnopqrstuvwxyz"[k % 26], k // 26
        out.append(w)
    return out


# --- reference formulas, written from datatrove's filters, on whitespace words -----------------


def ref_top_ngram(ws: list[str], n: int) -> int:
    grams = [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def ref_dup_ngram(ws: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    total, i = 0, 0
    while i < len(ws) - n + 1:
        gram = tuple(ws[i:i + n])
        if gram in seen:
            total += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


def straddle(make, value, limit: float, ks: range) -> tuple[str, str]:
    """The texts make(k) on both sides of the first k where value(text) crosses ``limit``."""
    prev = make(ks[0])
    for k in ks[1:]:
        cur = make(k)
        a, b = value(prev), value(cur)
        if (a <= limit) != (b <= limit):
            return (prev, cur) if a <= limit else (cur, prev)
        prev = cur
    raise AssertionError("no crossing in range")


# --- Gopher quality ------------------------------------------------------------------------------

GOPHER_QUALITY_CASES = [
    # (rule, config kept on, passing text, failing text)
    ("gopher_word_count", {"gopher_min_words": ...}, words(50), words(49)),
    ("gopher_word_count", {"gopher_max_words": ...}, words(100_000, "ab"), words(100_001, "ab")),
    ("gopher_mean_word_length", {"gopher_min_mean_word_length": ...},
     words(50, "abc"), words(49, "abc") + " ab"),
    ("gopher_mean_word_length", {"gopher_max_mean_word_length": ...},
     words(50, "abcdefghij"), words(49, "abcdefghij") + " abcdefghijk"),
    # symbol ratio: "#" (and "...") over all tokens, punctuation tokens included
    ("gopher_hash_ratio", {"gopher_max_symbol_word_ratio": ...},
     words(100) + " #" * 11, words(100) + " #" * 12),
    ("gopher_ellipsis_ratio", {"gopher_max_symbol_word_ratio": ...},
     words(100) + " ..." * 11, words(100) + " \u2026" * 12),
    ("gopher_bullet_lines_ratio", {"gopher_max_bullet_lines_ratio": ...},
     "\n".join(["- item"] * 9 + ["text"]), "\n".join(["- item"] * 9 + ["  \u2022 item"])),
    ("gopher_ellipsis_lines_ratio", {"gopher_max_ellipsis_lines_ratio": ...},
     "\n".join(["and so on..."] * 3 + ["done"] * 7), "\n".join(["and so on\u2026 "] * 4 + ["done"] * 6)),
    ("gopher_alpha_words_ratio", {"gopher_min_alpha_words_ratio": ...},
     words(80) + " 42" * 20, words(79) + " 42" * 21),
    ("gopher_stop_words", {"gopher_min_stop_words": ...},
     "the cat and a dog", "the cat or a dog The And"),
]


@pytest.mark.parametrize(("rule", "keep", "ok", "bad"), GOPHER_QUALITY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GOPHER_QUALITY_CASES)])
def test_gopher_quality_rule_at_threshold(rule, keep, ok, bad):
    assert reasons([ok, bad], config=solo("gopher_quality", **keep)) == [None, rule]


def test_gopher_word_count_ignores_punctuation_tokens():
    # 49 words and a lot of punctuation: punctuation tokens are not words (datatrove's non-symbol words)
    assert reasons([words(49) + " , . ; ---"], config=solo("gopher_quality", gopher_min_words=...)) == [
        "gopher_word_count"]


# --- Gopher repetition ---------------------------------------------------------------------------


def test_dup_paragraph_fraction_at_threshold():
    cfg = solo("gopher_repetition", rep_max_dup_para_frac=...)
    paras = [f"paragraph {w}" for w in uniq(7)]
    ok = "\n\n".join(paras + paras[:3])  # 3 of 10 repeated: 0.3
    bad = "\n\n\n".join(paras[:6] + paras[:4])  # 4 of 10
    assert reasons([ok, bad], config=cfg) == [None, "gopher_rep_dup_para_frac"]


def test_dup_paragraph_char_fraction_at_threshold():
    cfg = solo("gopher_repetition", rep_max_dup_para_char_frac=...)

    def text(f: int) -> str:  # 20 repeated characters of 2 * 20 + 4 + f
        return "x" * 20 + "\n\n" + "x" * 20 + "\n\n" + "y" * f

    assert reasons([text(56), text(55)], config=cfg) == [None, "gopher_rep_dup_para_char_frac"]


def test_dup_line_fraction_at_threshold():
    cfg = solo("gopher_repetition", rep_max_dup_line_frac=...)
    lines = [f"line {w}" for w in uniq(7)]
    ok = "\n".join(lines + lines[:3])
    bad = "\n\n".join(lines[:6] + lines[:4])  # empty lines do not count (re.split("\n+"))
    assert reasons([ok, bad], config=cfg) == [None, "gopher_rep_dup_line_frac"]


def test_dup_line_char_fraction_at_threshold():
    cfg = solo("gopher_repetition", rep_max_dup_line_char_frac=...)

    def text(f: int) -> str:
        return "x" * 20 + "\n" + "x" * 20 + "\n" + "y" * f

    assert reasons([text(58), text(57)], config=cfg) == [None, "gopher_rep_dup_line_char_frac"]


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_char_fraction_at_threshold(n, limit):
    cfg = solo("gopher_repetition", rep_top_ngram_max_char_frac=((n, limit),))
    gram = " ".join(uniq(n, width=3))
    filler = uniq(400, width=5)

    def make(k: int) -> str:
        return " ".join([gram] * 6 + filler[:k])

    ok, bad = straddle(make, lambda t: ref_top_ngram(t.split(), n) / len(t), limit, range(0, 400))
    assert reasons([ok, bad], config=cfg) == [None, f"gopher_rep_top_{n}gram"]


@pytest.mark.parametrize(("n", "limit"), [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_dup_ngram_char_fraction_at_threshold(n, limit):
    cfg = solo("gopher_repetition", rep_dup_ngram_max_char_frac=((n, limit),))
    run = " ".join(uniq(n, width=4))
    filler = uniq(600, width=5)

    def make(k: int) -> str:
        return " ".join([run] * 5 + filler[:k])

    ok, bad = straddle(make, lambda t: ref_dup_ngram(t.split(), n) / len(t), limit, range(0, 600))
    assert reasons([ok, bad], config=cfg) == [None, f"gopher_rep_dup_{n}gram"]


def test_repetition_counts_match_datatrove_formulas_on_random_texts():
    """Top and duplicate n-gram characters, line and paragraph duplicates, against the reference."""
    rng = random.Random(7)
    texts = ["", "\n", "a b c d e a b c d e a b c d e", "x\n\n\nx\n", "\na\n"]
    for _ in range(150):
        pool = ["a", "bb", "ccc", "the", "x.", "!", "\n", "\n\n"]
        vocab = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 150))))
    work = with_tokens(pl.DataFrame({"_i": range(len(texts)), "text": texts, "uri": [None] * len(texts)},
                                    schema_overrides={"uri": pl.String}))
    tokens = work.get_column("_tokens").to_list()
    no_early = dict.fromkeys(GOPHER_R)
    for n in (2, 3, 4):
        cfg = WebFilterConfig(rep_top_ngram_max_char_frac=((n, 1.0),), rep_dup_ngram_max_char_frac=(),
                              **no_early)
        got = web.gopher_repetition_features(work, cfg).get_column(f"r_top{n}").to_list()
        assert got == [ref_top_ngram(t, n) for t in tokens]
    for n in range(5, 11):  # limit 0: every document with a repeat takes the exact walk
        cfg = WebFilterConfig(rep_top_ngram_max_char_frac=(), rep_dup_ngram_max_char_frac=((n, 0.0),),
                              **no_early)
        got = web.gopher_repetition_features(work, cfg).get_column(f"r_dup{n}").to_list()
        assert got == [ref_dup_ngram(t, n) for t in tokens]
    feats = web.gopher_repetition_features(work, WebFilterConfig())
    for text, row in zip(texts, feats.iter_rows(named=True), strict=True):
        for kind, parts in (("para", re.split(r"\n{2,}", text.strip())), ("line", re.split("\n+", text))):
            seen: set[str] = set()
            dups = chars = 0
            for p in parts:
                if p in seen:
                    dups, chars = dups + 1, chars + len(p)
                seen.add(p)
            assert (row[f"r_{kind}s"], row[f"r_dup_{kind}s"], row[f"r_dup_{kind}_chars"]) == (
                len(parts), dups, chars), (kind, text)


def test_whitespace_only_text_gets_a_reason_in_every_family():
    texts = ["", "   ", " \n\t\n "]
    expect = {"gopher_quality": "gopher_word_count", "gopher_repetition": "gopher_rep_empty",
              "c4": "c4_min_sentences", "fineweb": "fineweb_empty"}
    for family, rule in expect.items():
        cfg = WebFilterConfig(**{f: (f == family) for f in FAMILIES})
        assert reasons(texts, config=cfg) == [rule] * 3
    assert reasons(texts, "code") == ["code_empty"] * 3


# --- C4 ------------------------------------------------------------------------------------------

FIVE = "\n".join(["This is the first sentence here.", "Here is a second full sentence!",
                  "Is this the third sentence of five?", "A fourth sentence follows right now.",
                  "And this is the fifth sentence."])
FOUR = FIVE.rsplit("\n", 1)[0]


@pytest.mark.parametrize(("ok", "bad"), [
    (FIVE, FOUR),
    # two sentences on one line count twice
    (FOUR.replace("here.", "here. And another one."), FOUR),
    # the line rules run first: sentences on removed lines do not count
    (FIVE, FOUR + "\nWe use cookies to improve the site."),
    (FIVE, FOUR + "\nPlease enable JavaScript to continue."),
    (FIVE, FOUR + "\nShort line."),
    (FIVE, FOUR + "\nThis line has no terminal punctuation"),
    (FIVE, FOUR + "\nThis line trails off..."),
    (FIVE, FOUR + "\nThis line has a word " + "w" * 1001 + "."),
    (FIVE + "\nThis line has a word " + "w" * 1000 + ".", FOUR + "\nThis line has a word " + "w" * 1001 + "."),
    # citation markers are removed before the end-of-line check
    (FOUR + "\nA claim with a citation.[12]", FOUR + "\nA claim with a note.[note]"),
])
def test_c4_min_sentences_after_line_rules(ok, bad):
    assert reasons([ok, bad], config=solo("c4")) == [None, "c4_min_sentences"]


def test_c4_lorem_ipsum_and_curly_bracket_only_on_surviving_lines():
    cfg = solo("c4")
    assert reasons([
        FIVE + "\nLorem ipsum dolor sit amet.",
        FIVE + "\nlorem ipsum dolor sit amet",  # no terminal punctuation: the line is dropped first
        FIVE + "\nThe value {x} is set here.",
        FIVE + "\n{x} here",  # too few words: dropped first
        FIVE + "\nThe JavaScript object {a: 1} is shown.",  # a javascript line is dropped before "{"
        FIVE + "\nThe value {x} is set here.\nLorem ipsum dolor sit amet.",  # fixed order: lorem first
    ], config=cfg) == ["c4_lorem_ipsum", None, "c4_curly_bracket", None, None, "c4_lorem_ipsum"]


def test_c4_detail_explains_the_line_rules():
    out = filter_documents(frame(FOUR + "\nWe use cookies here."), "web", solo("c4"))
    assert out.get_column("drop_detail").item() == "sentences=4 < 5 after the line rules (kept 4 of 5 lines)"


# --- FineWeb -------------------------------------------------------------------------------------

LONG = [f"this is a fairly long line of text number {w}" for w in uniq(100, width=3)]


def test_fineweb_line_punct_ratio_at_threshold():
    cfg = solo("fineweb", fineweb_min_line_punct_ratio=...)
    ok = "\n".join([line + "." for line in LONG[:3]] + LONG[3:25])  # 3 of 25 = 0.12
    bad = "\n\n".join([line + "!" for line in LONG[:2]] + LONG[2:25])  # blank lines do not count
    assert reasons([ok, bad], config=cfg) == [None, "fineweb_line_punct_ratio"]
    no_zero = replace(cfg, fineweb_line_punct_exclude_zero=True)  # FineWeb's option for unpunctuated text
    assert reasons([bad, "\n".join(LONG[:5])], config=no_zero) == ["fineweb_line_punct_ratio", None]


def test_fineweb_short_line_ratio_at_threshold():
    cfg = solo("fineweb", fineweb_max_short_line_ratio=...)
    short = [f"short {w}" for w in uniq(100, width=3)]
    ok = "\n".join(short[:67] + LONG[:33])  # 0.67
    bad = "\n".join(short[:68] + LONG[:32])
    assert reasons([ok, bad], config=cfg) == [None, "fineweb_short_line_ratio"]
    assert reasons(["x" * 30, "x" * 31], config=replace(cfg, fineweb_max_short_line_ratio=0.0)) == [
        "fineweb_short_line_ratio", None]


def test_fineweb_char_dup_ratio_at_threshold():
    cfg = solo("fineweb", fineweb_max_char_dup_ratio=...)

    def text(f: int) -> str:  # 10 repeated characters of 20 + f (newlines not counted)
        return "x" * 10 + "\n" + "x" * 10 + "\n" + "y" * f

    assert reasons([text(980), text(979)], config=cfg) == [None, "fineweb_char_dup_ratio"]


def test_fineweb_new_line_ratio_at_threshold():
    cfg = solo("fineweb", fineweb_max_new_line_ratio=...)
    ok = "\n".join(["a b c"] * 3 + ["d"])  # 3 newlines / 10 words
    bad = "\n".join(["a b c"] * 3 + ["d", ""])  # 4 / 10
    assert reasons([ok, bad], config=cfg) == [None, "fineweb_new_line_ratio"]


# --- order, funnel, API --------------------------------------------------------------------------


def test_prose_is_kept_by_all_web_rules():
    assert len(PROSE.split()) > 120
    assert reasons([PROSE]) == [None]


def test_first_failing_rule_in_documented_order():
    names = rule_names("web")
    assert names[0] == "gopher_word_count" and names[-1] == "fineweb_new_line_ratio"
    assert [n.split("_")[0] for n in names] == sorted((n.split("_")[0] for n in names),
                                                      key=["gopher", "c4", "fineweb"].index)
    short_lorem = "Lorem ipsum dolor sit amet.\n" * 3  # too few words, repeated, lorem ipsum
    assert reasons([short_lorem]) == ["gopher_word_count"]
    cfg = WebFilterConfig(gopher_quality=False)
    assert reasons([short_lorem], config=cfg) == ["gopher_rep_dup_line_frac"]
    assert reasons([short_lorem], config=replace(cfg, gopher_repetition=False)) == ["c4_lorem_ipsum"]
    # a document failing two rules of one family gets the earlier one
    assert reasons([words(49, "a")], config=solo("gopher_quality", gopher_min_words=...,
                                                   gopher_min_mean_word_length=...)) == ["gopher_word_count"]


def test_rule_names_follow_the_config():
    assert rule_names("code")[:3] == ["code_empty", "code_data_extension", "code_autogenerated"]
    cfg = WebFilterConfig(gopher_quality=False, c4=False, fineweb=False,
                          rep_dup_ngram_max_char_frac=((5, 0.15),), rep_max_dup_line_frac=None)
    assert rule_names("web", cfg) == [
        "gopher_rep_empty", "gopher_rep_dup_para_frac", "gopher_rep_dup_para_char_frac",
        "gopher_rep_dup_line_char_frac", "gopher_rep_top_2gram", "gopher_rep_top_3gram",
        "gopher_rep_top_4gram", "gopher_rep_dup_5gram"]
    assert rule_names("web", WebFilterConfig(**dict.fromkeys(FAMILIES, False))) == []


def test_output_keeps_rows_columns_and_text():
    docs = frame(PROSE, "", words(10), PROSE + "\n\n" + PROSE).with_columns(
        source=pl.lit("web"), license=pl.lit(None, pl.String), meta=pl.struct(n=pl.int_range(4)))
    out = filter_documents(docs, "web")
    assert out.columns == [*docs.columns, "drop_reason", "drop_detail"]
    assert out.drop("drop_reason", "drop_detail").equals(docs)
    assert out.schema["drop_reason"] == pl.String and out.schema["drop_detail"] == pl.String
    got = out.select("drop_reason", "drop_detail").rows()
    assert got[0] == (None, None)
    assert got[1] == ("gopher_word_count", "words=0 < 50")
    assert got[2] == ("gopher_word_count", "words=10 < 50")
    assert got[3] == ("gopher_rep_dup_para_frac", "dup_paragraphs/paragraphs=0.5 > 0.3")
    again = filter_documents(out, "web")  # re-filtering replaces the verdict columns
    assert again.equals(out)


def test_empty_frames_and_null_text():
    empty = frame()
    for source in ("web", "code"):
        out = filter_documents(empty, source)
        assert out.height == 0 and out.columns == ["id", "text", "uri", "drop_reason", "drop_detail"]
        assert funnel(out) == {"in": 0, "kept": 0, "dropped": {}}
    nulls = pl.DataFrame({"id": ["a"], "text": [None], "uri": [None]},
                         schema={"id": pl.String, "text": pl.String, "uri": pl.String})
    assert filter_documents(nulls, "web").get_column("drop_reason").to_list() == ["gopher_word_count"]


def test_funnel_reconciles_on_a_mixed_frame():
    texts = [PROSE, PROSE.replace(".", ""), "", words(30), "\n".join(["- item"] * 80),
             PROSE + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
             PROSE + "\n\n" + PROSE, "# " * 300 + PROSE, PROSE.replace("\n\n", "\n" + "{}\n")]
    out = filter_documents(frame(*texts), "web")
    f = funnel(out)
    assert f["in"] == len(texts) == f["kept"] + sum(f["dropped"].values())
    assert f["kept"] == out.get_column("drop_reason").null_count() >= 1
    assert set(f["dropped"]) <= set(rule_names("web"))
    assert all(v > 0 for v in f["dropped"].values())
    assert Counter(r for r in out.get_column("drop_reason").to_list() if r) == Counter(f["dropped"])
    with pytest.raises(ValueError, match="drop_reason"):
        funnel(frame("x"))


def test_funnels_of_batches_merge_into_the_funnel_of_the_whole():
    texts = [PROSE, "", words(30), "\n".join(["- item"] * 80), PROSE + "\n\n" + PROSE, words(10), PROSE,
             "# " * 300 + PROSE, PROSE.replace(".", "")]
    whole = funnel(filter_documents(frame(*texts), "web"))
    for size in (1, 2, 4):
        parts = [funnel(filter_documents(frame(*texts[i: i + size]), "web"))
                 for i in range(0, len(texts), size)]
        merged = merge_funnels(parts)
        assert merged == whole and list(merged["dropped"]) == list(whole["dropped"])  # same order too
    assert merge_funnels([]) == funnel(filter_documents(frame(), "web")) == {"in": 0, "kept": 0, "dropped": {}}


@pytest.mark.parametrize("source", ["web", "code"])
def test_frames_of_many_chunks_are_judged_like_one_chunk(source):
    """A table read in record batches becomes a frame of many chunks (polars 2.1 panicked on those in
    the web rules' detail expressions); the verdicts are those of the same frame in one chunk."""
    listing = "\n".join(f"the list of harbour ships number {i} and their captains" for i in range(30))
    texts = [PROSE, PROSE.replace("\n\n", " ") + "\n" + listing, words(30), PROSE + "\n\n" + PROSE,
             "x = 1\n" * 12, PROSE.replace(".", "")] * 4
    one = frame(*texts)
    for size in (1, 2, 5):
        many = pl.concat([one.slice(i, size) for i in range(0, one.height, size)], rechunk=False)
        assert many.n_chunks() == -(-one.height // size)
        assert filter_documents(many, source).equals(filter_documents(one, source))


@pytest.mark.parametrize(("make", "field"), [
    (lambda: WebFilterConfig(gopher_min_words=-1), "gopher_min_words"),
    (lambda: WebFilterConfig(gopher_min_words=2.5), "gopher_min_words"),
    (lambda: WebFilterConfig(gopher_min_words=200_000), "gopher_min_words"),
    (lambda: WebFilterConfig(gopher_min_mean_word_length=11), "gopher_min_mean_word_length"),
    (lambda: WebFilterConfig(gopher_min_alpha_words_ratio=1.5), "gopher_min_alpha_words_ratio"),
    (lambda: WebFilterConfig(rep_max_dup_line_frac="0.3"), "rep_max_dup_line_frac"),
    (lambda: WebFilterConfig(fineweb_max_char_dup_ratio=float("nan")), "fineweb_max_char_dup_ratio"),
    (lambda: WebFilterConfig(fineweb_short_line_length=None), "fineweb_short_line_length"),
    (lambda: WebFilterConfig(c4=1), "c4"),
    (lambda: WebFilterConfig(gopher_stop_words=()), "gopher_stop_words"),
    (lambda: WebFilterConfig(gopher_stop_words=["the", "and"]), "gopher_stop_words"),
    (lambda: WebFilterConfig(rep_top_ngram_max_char_frac=((1, 0.2),)), "rep_top_ngram_max_char_frac"),
    (lambda: WebFilterConfig(rep_dup_ngram_max_char_frac=((6, 0.1), (5, 0.2))), "rep_dup_ngram_max_char_frac"),
    (lambda: WebFilterConfig(c4_max_word_length=0), "c4_max_word_length"),
    (lambda: CodeFilterConfig(max_line_length=0), "max_line_length"),
    (lambda: CodeFilterConfig(min_alphanum_fraction=-0.1), "min_alphanum_fraction"),
    (lambda: CodeFilterConfig(data_extensions=("json",)), "data_extensions"),
    (lambda: CodeFilterConfig(autogenerated_scan_lines=0), "autogenerated_scan_lines"),
    (lambda: CodeFilterConfig(comment_prefixes=("#", "")), "comment_prefixes"),
])
def test_config_validation_names_the_field(make, field):
    with pytest.raises(ValueError, match=rf"\.{field} "):
        make()


def test_configs_are_frozen_and_default_to_the_papers():
    cfg = WebFilterConfig()
    with pytest.raises(AttributeError):
        cfg.gopher_min_words = 10  # type: ignore[misc]
    assert (cfg.gopher_min_words, cfg.gopher_max_words, cfg.gopher_min_stop_words) == (50, 100_000, 2)
    assert cfg.rep_dup_ngram_max_char_frac[0] == (5, 0.15) and cfg.rep_dup_ngram_max_char_frac[-1] == (10, 0.10)
    assert (cfg.fineweb_min_line_punct_ratio, cfg.fineweb_max_short_line_ratio) == (0.12, 0.67)
    code = CodeFilterConfig()
    assert (code.max_line_length, code.max_avg_line_length, code.min_alphanum_fraction) == (1000, 100, 0.25)
    assert all(f.name for f in fields(code))


def test_api_input_errors():
    with pytest.raises(ValueError, match="source"):
        filter_documents(frame("x"), "books")
    with pytest.raises(ValueError, match="source"):
        rule_names("Web")
    with pytest.raises(ValueError, match="CodeFilterConfig"):
        filter_documents(frame("x"), "code", WebFilterConfig())
    with pytest.raises(ValueError, match="WebFilterConfig"):
        rule_names("web", CodeFilterConfig())
    with pytest.raises(ValueError, match="missing required column"):
        filter_documents(frame("x").drop("uri"), "web")
    with pytest.raises(ValueError, match="'text' must be a string column"):
        filter_documents(frame("x").with_columns(text=pl.lit(1)), "web")
    with pytest.raises(ValueError, match="DataFrame"):
        filter_documents({"id": ["a"], "text": ["x"], "uri": [None]}, "web")  # type: ignore[arg-type]


def test_alpha_words_are_whitespace_words_by_default_tokens_on_request():
    """Markdown with link syntax and inline code: whitespace words mostly hold letters, while
    datatrove-style tokens count every bracket and backtick as a word."""
    line = "See the [guide](https://example.org/docs) and run `pip install -e .[dev]` to set it up.\n"
    frame = pl.DataFrame({"id": ["a"], "text": [line * 30], "uri": ["u"]})
    config = {"gopher_repetition": False, "c4": False, "fineweb": False}
    ws = filter_documents(frame, "web", WebFilterConfig(**config))
    tokens = filter_documents(frame, "web", WebFilterConfig(gopher_alpha_words="tokens", **config))
    assert ws["drop_reason"][0] is None
    assert tokens["drop_reason"][0] == "gopher_alpha_words_ratio"
    with pytest.raises(ValueError, match="gopher_alpha_words"):
        WebFilterConfig(gopher_alpha_words="spacy")
