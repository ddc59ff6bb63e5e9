"""How training runs start: the ``training_launcher`` resource.

A launcher runs ``python -m phi_assets.training.entrypoint --config URI`` through Dagster Pipes and
returns the custom messages rank 0 reported (one ``{"kind": "step", ...}`` per step, then a
``{"kind": "summary", ...}``). ``work_dir(asset, key)`` is where a run keeps its checkpoints, so a
relaunch of the same run resumes.

- ``SubprocessLauncher`` (local, ci): a child process on this machine, under ``torchrun`` when
  ``nproc`` > 1 (DDP or DeepSpeed across local devices or CPU processes).
- ``resources.launcher.K8sTrainingLauncher`` (k8s): a Kubernetes Job on one 8xA100 node, or
  a Kubeflow PyTorchJob across nodes, with checkpoints on a volume.
"""

from __future__ import annotations

import sys

import dagster as dg

from resources.pipes import WholeLineTempFileMessageReader


class TrainingLauncher(dg.ConfigurableResource):
    """The interface; see the module docstring."""

    def run(self, context: dg.AssetExecutionContext, config_uri: str, run_key: str) -> list[dict]:
        raise NotImplementedError

    def work_dir(self, asset: str, key: str) -> str:
        raise NotImplementedError


class SubprocessLauncher(TrainingLauncher):
    root: str  # run directories live under it ($PHI_HOME/runs)
    nproc: int = 1  # processes (torchrun --standalone) per run
    env: dict[str, str] = {}  # extra environment, e.g. {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}

    def command(self, config_uri: str) -> list[str]:
        entry = ["-m", "phi_assets.training.entrypoint", "--config", config_uri]
        if self.nproc > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc}",
                *entry,
            ]
        return [sys.executable, *entry]

    def run(self, context: dg.AssetExecutionContext, config_uri: str, run_key: str) -> list[dict]:
        invocation = dg.PipesSubprocessClient(message_reader=WholeLineTempFileMessageReader()).run(
            context=context, command=self.command(config_uri), env=dict(self.env) or None
        )
        return invocation.get_custom_messages()

    def work_dir(self, asset: str, key: str) -> str:
        return f"{self.root.rstrip('/')}/{asset}/{key}"
