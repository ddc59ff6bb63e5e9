"""Our DPO loss against the standard: TRL's ``DPOTrainer`` on the same model, reference, batch and beta.

The policy and the reference are two seeded phi-3 debug models, exported in Hugging Face format: ours reads
the export through ``model.load_export``, TRL through ``Phi3ForCausalLM.from_pretrained``. Both get the
same token ids (TRL's ``DataCollatorForPreference`` pads them its way, ``DPOLoader`` ours), and the loss
and every parameter's gradient must agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from phi_assets.mixture import tokenizer as tk
from phi_assets.training import model as phi
from phi_assets.training.dpo import DPOLoader, dpo_loss
from phi_assets.training.phi3_configs import DEBUG
from phi_assets.training.sft import Example
from tests.support.phi3_exports import export_debug_model

TRIPLES = [
    ("def add(a, b):\n", "    return a + b\n", "    return a - b\n"),
    ("# the largest item\ndef largest(xs):\n", "    return max(xs)\n", "    xs.sort()\n    return xs[0]\n"),
    ("Q: what is 2 + 2?\nA:", " 4", " 22, since the digits are written one after the other"),
]


def _ids(loaded: tk.Loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text, add_special_tokens=False).ids


def test_our_dpo_loss_and_gradients_equal_trls(tmp_path: Path):
    beta = 0.3  # not either side's default: it must reach both
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Phi3ForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    cfg = DEBUG["phi3_mini_debug"]()
    for name, seed in (("policy", 0), ("reference", 1)):
        export_debug_model(cfg, tmp_path / name, seed=seed)
    loaded = tk.load(tmp_path / "policy")
    triples = [(_ids(loaded, p), _ids(loaded, c), _ids(loaded, r)) for p, c, r in TRIPLES]

    # Ours: rows [chosen..., rejected...], labels on the completions only.
    ours = {name: phi.load_export(phi.build(cfg), load_file(str(tmp_path / name / "model.safetensors")))
            for name in ("policy", "reference")}
    pairs = [(Example(torch.tensor(p + c).numpy(), len(p)), Example(torch.tensor(p + r).numpy(), len(p)))
             for p, c, r in triples]
    longest = max(len(p) + max(len(c), len(r)) for p, c, r in triples)
    batch = DPOLoader(pairs, longest, len(pairs), pad_id=loaded.eot_id).next_batch()
    ids, labels = torch.from_numpy(batch.input_ids).long(), torch.from_numpy(batch.labels).long()
    ours["policy"].train()
    loss = dpo_loss(ours["reference"], beta)(ours["policy"](ids), ids, labels)
    loss.backward()

    # TRL: its trainer's own loss on its collator's batch of the same ids.
    hf = {name: Phi3ForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32)
          for name in ("policy", "reference")}
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=["sigmoid"], report_to=[],
                     use_cpu=True, bf16=False, max_length=None)
    columns = ("prompt", "chosen", "rejected")
    dataset = Dataset.from_dict({k: [t[i] for t in TRIPLES] for i, k in enumerate(columns)})
    trainer = DPOTrainer(model=hf["policy"], ref_model=hf["reference"], args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    inputs = collate([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in triples])
    trainer.model.train()
    reference_loss = trainer.compute_loss(trainer.model, inputs)
    reference_loss.backward()

    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-5, abs=1e-6)
    assert loss.item() != pytest.approx(0.6931, abs=1e-3)  # the two models differ: not log(2) at a zero margin
    theirs = dict(trainer.model.named_parameters())
    compared = 0
    for name, param in ours["policy"].named_parameters():
        other = theirs[name].grad
        assert param.grad is not None and other is not None, name
        torch.testing.assert_close(param.grad, other, rtol=1e-4, atol=1e-6, msg=name)
        compared += 1
    assert compared == len(theirs) and any(p.grad.abs().sum() > 0 for p in ours["policy"].parameters())
