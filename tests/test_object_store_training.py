"""A training run the way a cluster runs it, on one machine: two simulated nodes of two ranks each
(two ``torchrun --nnodes 2`` agents meeting on loopback, gloo on CPU) read their config and inputs
from an S3-compatible server (moto in server mode, through s3fs), stage the inputs once per node,
train with checkpoints into a run directory both nodes share (the checkpoint volume), and publish
the export to the bucket. Killed with SIGKILL mid-run and started again, the run resumes from its
last checkpoint and publishes weights bit-identical to an uninterrupted run's. Kubernetes itself is
the only stand-in: the two agents play the two pods of a PyTorchJob."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import training_data
from tests.support.object_store import s3_server
from tests.support.processes import free_port

STEPS, EVERY, KILL_AFTER = 40, 8, 12  # the kill lands after the step-8 checkpoint, well before the end


def _upload(fs, data: training_data.TrainingData, bucket: str) -> dict:
    """The run's inputs on the bucket: the tokenizer and the token shards, as a cluster's store holds them."""
    fs.put(str(data.tokenizer) + "/", f"{bucket}/inputs/tok/", recursive=True)
    sources = {}
    for name, shards in data.shards.items():
        for shard in shards:
            fs.put(str(shard) + "/", f"{bucket}/inputs/{name}/{shard.name}/", recursive=True)
        sources[name] = [f"{bucket}/inputs/{name}/{s.name}" for s in shards]
    return {"tokenizer": f"{bucket}/inputs/tok", "sources": sources}


def _launch(config_uri: str, env: dict) -> list[subprocess.Popen]:
    port = free_port()
    module = ["-m", "phi_assets.training.entrypoint", "--config", config_uri]
    return [
        subprocess.Popen(
            training_data.torchrun(2, port, *module, nnodes=2, node_rank=node),
            cwd=training_data.ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]


def _finish(nodes: list[subprocess.Popen]) -> None:
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]


def _kill_after(nodes: list[subprocess.Popen], metrics: Path, lines: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= lines:
            break
        assert all(n.poll() is None for n in nodes), "the run ended before it could be killed"
        time.sleep(0.002)
    import psutil

    # a pod's end: every process of it at once (torchrun starts its workers in sessions of their own)
    doomed = [psutil.Process(n.pid) for n in nodes]
    doomed += [c for p in list(doomed) for c in p.children(recursive=True)]
    for proc in doomed:
        proc.send_signal(signal.SIGKILL)
    for node in nodes:
        node.communicate(timeout=60)


def _staging(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "inputs" / "staging.jsonl").read_text().splitlines()]


@pytest.mark.slow  # torchrun: two agents of two workers each, three times
def test_two_nodes_train_from_s3_resume_after_sigkill_and_publish_identical_weights(tmp_path):
    data = training_data.make(tmp_path / "data")
    with s3_server() as s3:
        bucket, fs = s3.bucket("phi"), s3.filesystem()
        inputs = _upload(fs, data, bucket)
        env = training_data.child_env(**s3.env)
        weights = {}
        for run in ("whole", "killed"):
            config = data.config(
                "pretrain", tmp_path / run, {"max_steps": STEPS, "checkpoint_every": EVERY}, **inputs
            )
            config["publish"] = f"{bucket}/runs/{run}/result"
            fs.pipe(f"{bucket}/runs/{run}/config.json", json.dumps(config).encode())
            nodes = _launch(f"{bucket}/runs/{run}/config.json", env)
            if run == "killed":
                _kill_after(nodes, tmp_path / run / "metrics.jsonl", KILL_AFTER)
                assert not (tmp_path / run / "hf").exists() and not fs.exists(f"{bucket}/runs/{run}/result")
                assert (tmp_path / run / "checkpoint").is_dir()  # what the retried pods resume from
                nodes = _launch(f"{bucket}/runs/{run}/config.json", env)
            _finish(nodes)
            published = fs.cat_file(f"{bucket}/runs/{run}/result/hf/model.safetensors")
            assert published == (tmp_path / run / "hf" / "model.safetensors").read_bytes()
            weights[run] = hashlib.sha256(published).hexdigest()
            summary = json.loads(fs.cat_file(f"{bucket}/runs/{run}/result/summary.json"))
            assert summary["world_size"] == 4 and summary["sequences_seen"] == STEPS * 8

    assert weights["killed"] == weights["whole"]
    uris = {inputs["tokenizer"], *(u for shards in inputs["sources"].values() for u in shards)}
    for run, launches in (("whole", 1), ("killed", 2)):
        log = _staging(tmp_path / run)
        assert len(log) == 2 * launches  # one stager per node per launch: local rank 0 of each node
        assert sorted(e["node"] for e in log[:2]) == ["0", "1"] and {e["rank"] for e in log} == {0, 2}
        first = [u for e in log[:2] for u in e["copied"]]
        assert sorted(first) == sorted(uris)  # each input copied once, by one of the two nodes
        assert all(e["copied"] == [] and sorted(e["reused"]) == sorted(uris) for e in log[2:])  # the retry
