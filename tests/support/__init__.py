"""What the tests share besides fixtures: input files, homes, in-process runs, processes, the vLLM server,
the demo's planted home, the browser driver and the suite's tiers.

``tests/conftest.py`` holds only fixtures and hooks, and no module imports it: anything a test module
needs to import lives here.
"""
