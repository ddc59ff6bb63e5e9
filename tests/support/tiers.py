"""The suite's two tiers: ``make test`` runs everything, ``make test-fast`` (``pytest -m "not slow"``) the
tests that start none of vLLM, Chromium, ``dagster dev``, DeepSpeed or the demo and take under ~10 s.

A test is slow when it uses (directly or through another fixture) one of ``SLOW_FIXTURES``, which
tests/conftest.py marks at collection, or when it carries ``@pytest.mark.slow`` itself (a module's
``pytestmark``, a class or the function): that is how a test that starts one of them without such a
fixture, or a long one, says so. tests/test_test_tiers.py finds every test whose code (with its
module's fixtures and helpers) matches ``ENTRY_POINTS`` and checks that it is slow one way or the other.
"""

from __future__ import annotations

import re

MARKER = "slow: starts vLLM, Chromium, `dagster dev`, DeepSpeed or the demo, or takes over ~10 s"
#: Session fixtures (tests/conftest.py) that start vLLM (``smol_backend``, ``vllm_server``) or run the
#: demo (``demo_run``).
SLOW_FIXTURES = frozenset({"demo_run", "smol_backend", "vllm_server"})
#: What starts each of them, as it appears in a test's source.
ENTRY_POINTS = {
    "vLLM": re.compile(
        r"\bVLLMBackend\b|\bvllm\.entrypoints\b|\bopenai_server\(|\[generator_model\]|\bgreedy_engines\("
    ),
    "Chromium": re.compile(r"(?<![\w.])chromium\(|\bchromium\.launch\(|\bui_on\("),
    "dagster dev": re.compile(r"\bdagster_dev\(|\bui_on\(|\"dagster\", \"dev\""),
    "DeepSpeed": re.compile(r"backend=\"deepspeed\"|\btorch\.distributed\.run\b"),
    "the demo": re.compile(r"\bphi_assets\.demo\b|\brun_demo\("),
}
