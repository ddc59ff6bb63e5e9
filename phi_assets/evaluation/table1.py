"""Table 1 of the phi-1 paper beside this project's scores: the one home of that table.

``eval_scores`` shows it as its ``phi1_table1`` metadata (every stage's current scores) and
``model_card`` in its evaluation section (the card's own stage).
"""

import dagster as dg

from phi_assets.common.tables import md_table

VERSION_EXEMPT = "the phi-1 Table 1 metadata table beside the scores: formatting"

#: Table 1 of "Textbooks Are All You Need" (Gunasekar et al., 2023): pass@1 in percent, None for "-".
PHI1_TABLE1 = (
    ("Codex-300M", "300M", "100B", 13.2, None),
    ("Codex-12B", "12B", "100B", 28.8, None),
    ("CodeGen-Mono-350M", "350M", "577B", 12.8, None),
    ("CodeGen-Mono-16.1B", "16.1B", "577B", 29.3, 35.3),
    ("PaLM-Coder", "540B", "780B", 35.9, 47.0),
    ("CodeGeeX", "13B", "850B", 22.9, 24.4),
    ("GPT-3.5", "175B", "N.A.", 47.0, None),
    ("SantaCoder", "1.1B", "236B", 14.0, 35.0),
    ("GPT-4", "N.A.", "N.A.", 67.0, None),
    ("Replit", "2.7B", "525B", 21.9, None),
    ("StarCoder", "15.5B", "1T", 33.6, 52.7),
    ("WizardCoder", "16B", "1T", 57.3, 51.8),
    ("phi-1-base", "1.3B", "7B", 29.0, None),
    ("phi-1-small", "350M", "7B", 45.0, None),
    ("phi-1", "1.3B", "7B", 50.6, 55.5),
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _count(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def phi1_table1(chain: dict[str, dict]) -> dg.MarkdownMetadataValue:
    """phi-1's rows, then one row per stage of ``chain`` (stage -> its ``eval_scores`` manifest metadata)."""
    rows = [[name, size, tokens, _pct(he), _pct(mbpp)] for name, size, tokens, he, mbpp in PHI1_TABLE1]
    for stage, meta in chain.items():
        scores = meta["scores"]
        size = f"{meta['num_params'] / 1e6:.1f}M" if meta.get("num_params") else "-"
        tokens = _count(meta["tokens"]) if meta.get("tokens") else "-"
        cells = []
        for benchmark in ("humaneval", "mbpp"):
            s = scores.get(benchmark)
            cells.append(f"**{100 * s['pass@1']:.1f}%** ({s['problems']} problems)" if s else "-")
        rows.append([f"**phi-factory {stage}** ({meta['model_version'][:8]})", size, tokens, *cells])
    return md_table(["model", "size", "train tokens", "HumanEval pass@1", "MBPP pass@1"], rows)
