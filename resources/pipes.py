"""A Dagster Pipes message reader that never parses half a line.

Dagster's ``PipesFileMessageReader`` tails the messages file with ``readline`` and parses whatever it
returns. When the external process is in the middle of writing a large message (a training run's
loss curve; Python writes it in buffer-sized chunks), ``readline`` returns the part written so far,
``json.loads`` fails, the reader thread dies, and every later message of the run is lost, including
the results the asset reads back (``get_custom_messages``). ``WholeLineTempFileMessageReader`` keeps
a partial line until its newline arrives; at the end of the session, whatever is left is parsed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Event

import dagster as dg


def whole_lines(path: str, should_stop: Callable[[], bool], poll_s: float = 0.01) -> Iterator[str]:
    """The lines appended to ``path``, each once it is complete; after ``should_stop``, the rest."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                pending += stream.read()
                yield from (line for line in pending.splitlines() if line.strip())
                return
            else:
                time.sleep(poll_s)


class WholeLineFileMessageReader(dg.PipesFileMessageReader):
    def _reader_thread(self, handler, is_resource_complete: Event) -> None:
        try:
            for line in whole_lines(self._path, is_resource_complete.is_set):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise


class WholeLineTempFileMessageReader(dg.PipesTempFileMessageReader):
    """``PipesTempFileMessageReader`` (the subprocess client's default) on ``WholeLineFileMessageReader``."""

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        with tempfile.TemporaryDirectory() as tempdir:
            reader = WholeLineFileMessageReader(os.path.join(tempdir, "messages"),
                                                include_stdio_in_messages=self._include_stdio_in_messages)
            with reader.read_messages(handler) as params:
                yield params
