"""The Pipes message reader of the training launcher waits for whole lines (resources/pipes.py)."""

from __future__ import annotations

import json
import threading
import time

from resources.pipes import WholeLineFileMessageReader, whole_lines


class Handler:
    def __init__(self):
        self.messages, self.errors = [], []

    def handle_message(self, message):
        self.messages.append(message)

    def report_pipes_framework_exception(self, where, exc_info):
        self.errors.append((where, exc_info))


def _write_slowly(path: str, messages: list[dict], done: threading.Event) -> None:
    """One message at a time, each line in small chunks with pauses: what a reader sees of a large
    message that the writer's buffer flushes in pieces."""
    with open(path, "a", encoding="utf-8") as f:
        for message in messages:
            line = json.dumps(message) + "\n"
            for i in range(0, len(line), 50):
                f.write(line[i:i + 50])
                f.flush()
                time.sleep(0.002)
    done.set()


def test_a_message_written_in_chunks_is_read_whole(tmp_path):
    """Dagster's own reader parses the part of a line written so far and its thread dies; every
    message here spans several chunks, and all arrive, in order."""
    path = str(tmp_path / "messages")
    messages = [{"method": "report_custom_message", "params": {"i": i, "curve": list(range(100))}}
                for i in range(8)]
    done = threading.Event()
    handler = Handler()
    reader = WholeLineFileMessageReader(path)
    with reader.read_messages(handler):
        writer = threading.Thread(target=_write_slowly, args=(path, messages, done))
        writer.start()
        writer.join()
    assert handler.errors == [] and handler.messages == messages


def test_whole_lines_keeps_a_partial_line_until_its_newline_and_flushes_the_rest_at_the_end(tmp_path):
    path = tmp_path / "m"
    path.write_text('{"a": 1}\n{"b"')
    stop = threading.Event()
    seen = []

    def read():
        seen.extend(whole_lines(str(path), stop.is_set, poll_s=0.001))

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.05)
    assert seen == ['{"a": 1}\n']  # the half line is not handed out
    with open(path, "a") as f:
        f.write(': 2}\n{"c": 3}')
    time.sleep(0.05)
    stop.set()
    t.join()
    assert [json.loads(x) for x in seen] == [{"a": 1}, {"b": 2}, {"c": 3}]
