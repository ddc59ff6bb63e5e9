"""Models of any family (``phi_assets.training.model.build``) with every weight moved off its init, for the
tests that compare logits: a layout mistake then shows as an error of order 1."""

from __future__ import annotations


def perturbed_model(cfg, scale: float, seed: int = 0):
    """``build(cfg)`` at a seeded init plus seeded noise of std ``scale`` on every parameter (norms off 1,
    biases off 0), in eval mode."""
    import torch

    from phi_assets.training import model as phi

    torch.manual_seed(seed)
    model = phi.build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()
