"""Small real input files: landing shards, JSON lines, WARC records and real Sphinx HTML."""

from __future__ import annotations

import gzip
import json
import sysconfig
import uuid
from pathlib import Path

from phi_assets.common.profiles import Profile

IDLE_HELP = Path(sysconfig.get_paths()["stdlib"]) / "idlelib" / "help.html"  # real Sphinx HTML


def landing(profile: Profile, source: str) -> Path:
    """The profile's landing directory for ``source``, created."""
    path = Path(profile.landing_uri(source))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def warc_record(uri: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\n"
            f"WARC-Date: 2026-11-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def write_warc(path: Path, records: list[tuple[str, bytes, str]], gz: bool) -> Path:
    with open(path, "wb") as f:
        for uri, body, ctype in records:
            rec = warc_record(uri, body, ctype)
            f.write(gzip.compress(rec) if gz else rec)  # one gzip member per record, as CC does
    return path


# English prose that every web quality rule keeps (tests/test_heuristics.py checks it).
PROSE = (
    "The old lighthouse stood at the edge of the harbour for more than a century. Every evening the "
    "keeper climbed the narrow stairs to light the lamp, and every morning he wrote a short note in "
    "his logbook about the weather and the ships that had passed.\n\n"
    "Over the years the town grew around the harbour. Fishermen built small houses along the shore, "
    "and a school opened near the market square. Children learned to read the signals of the lamp "
    "and to tell the direction of the wind from the shape of the waves.\n\n"
    "When the lighthouse was finally replaced by an automatic beacon, the people of the town decided "
    "to keep the old tower as a museum. Today visitors can climb the same stairs, read the keeper's "
    "notes, and look out over the water that he watched for so long."
)
