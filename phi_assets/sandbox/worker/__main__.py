"""The worker's entry point: ``python -I -B .../phi_assets/sandbox/worker/__main__.py --sandbox-worker FD``.

``-I`` puts neither this directory nor the project on ``sys.path``, and the worker must import nothing of
the project (``phi_assets`` and ``phi_assets.sandbox`` import the evaluator's side and third-party
packages): this directory is loaded, by path, as a package of its own (``PACKAGE``), standard library
only, and its ``serve.main`` runs the worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

PACKAGE = "phi_sandbox_worker"


def load() -> ModuleType:
    """This directory as the package ``PACKAGE`` (its ``__init__`` only, no parent package); its ``serve``."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(here, "__init__.py"), submodule_search_locations=[here]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.serve")


if __name__ == "__main__":
    load().main(sys.argv[1:])
