"""Prompt files of the synthetic assets (``phi_assets/synthetic/prompts/``), versioned with them.

A template is a repository file with ``{field}`` placeholders; its sha256 is part of the code
version of every asset that uses it, so editing a prompt regenerates what it produced (the
request cache still answers every request whose rendered prompt did not change).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

VERSIONED_FILES = ("prompts/*.md",)  # every template: part of the code version of the assets that use them

PROMPTS_DIR = Path(__file__).parent / "prompts"
_FIELD = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(_FIELD.findall(self.text))

    def render(self, **values: str) -> str:
        missing = self.fields - set(values)
        if missing:
            raise ValueError(f"prompt {self.name!r} needs {sorted(missing)}")
        # one pass, so a value containing "{topic}" is never substituted again
        return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), self.text)


def load(name: str, prompts_dir: Path = PROMPTS_DIR, needs: tuple[str, ...] = ()) -> Template:
    """The template ``prompts/{name}.md``; fails naming the file if it lacks a needed field."""
    path = Path(prompts_dir) / f"{name}.md"
    if not path.is_file():
        raise ValueError(f"no prompt {name!r}: {path} does not exist")
    template = Template(name, path.read_text(encoding="utf-8"))
    missing = [f for f in needs if f not in template.fields]
    if missing:
        raise ValueError(f"prompt {path} has no placeholder for {missing}")
    return template


def load_all() -> dict[str, Template]:
    """Every prompt the synthetic assets use (their hashes go into the assets' code versions)."""
    return {
        "textbook": load("textbook", needs=("topic", "audience", "format")),
        "exercise": load("exercise", needs=("topic", "audience")),
        "exercise_example": load("exercise_example"),
        "rewrite_qa": load("rewrite_qa", needs=("document",)),
        "rewrite_textbook": load("rewrite_textbook", needs=("document",)),
    }

