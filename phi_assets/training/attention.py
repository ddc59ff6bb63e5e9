"""Causal attention in one place: flash-attn on CUDA when installed, else torch SDPA.

``attend(q, k, v, cu_seqlens=None)`` takes ``(batch, heads, seq, head_dim)`` tensors. With
``cu_seqlens`` (packed documents, from the loader's ``document_boundaries``) attention stays inside
each document: flash-attn's varlen kernel, or an SDPA block-diagonal causal mask. ``PHI_ATTENTION``
(``flash``, ``sdpa``) overrides the choice; asking for ``flash`` where it cannot run is an error.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

BACKENDS = ("flash", "sdpa")


@functools.cache
def flash_attn_kernels():
    """flash-attn's (dense, varlen) kernels, or None where it is not installed."""
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_func, flash_attn_varlen_func


def backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend for tensors on ``device`` in ``dtype``."""
    wanted = os.environ.get("PHI_ATTENTION", "")
    half = dtype in (torch.float16, torch.bfloat16)
    usable = device.type == "cuda" and half and flash_attn_kernels() is not None
    if wanted == "flash" and not usable:
        raise ValueError("PHI_ATTENTION=flash needs flash-attn installed, a CUDA device and fp16/bf16 tensors")
    if wanted and wanted not in BACKENDS:
        raise ValueError(f"PHI_ATTENTION must be one of {BACKENDS}, got {wanted!r}")
    return wanted or ("flash" if usable else "sdpa")


def document_mask(cu_seqlens: torch.Tensor, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean: causal and within one document of the flattened batch."""
    flat = torch.arange(batch * seq, device=device)
    doc = torch.bucketize(flat, cu_seqlens[1:].to(device), right=True).view(batch, seq)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout: float = 0.0,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention; returns (batch, heads, seq, head_dim)."""
    batch, heads, seq, dim = q.shape
    if backend(q.device, q.dtype) == "flash":
        flash, varlen = flash_attn_kernels()
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # flash-attn wants (batch, seq, heads, dim)
        if cu_seqlens is None:
            return flash(qt, kt, vt, dropout_p=dropout, causal=True).transpose(1, 2)
        cu = cu_seqlens.to(q.device, torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        out = varlen(
            *(t.reshape(batch * seq, heads, dim) for t in (qt, kt, vt)),
            cu,
            cu,
            longest,
            longest,
            dropout_p=dropout,
            causal=True,
        )
        return out.view(batch, seq, heads, dim).transpose(1, 2)
    if cu_seqlens is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    mask = document_mask(cu_seqlens, batch, seq, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
