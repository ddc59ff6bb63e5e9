"""Causal attention in one place: flash-attn on CUDA when installed, else torch SDPA.

``attend(q, k, v, cu_seqlens=None, window=None)`` takes ``(batch, heads, seq, head_dim)`` queries and
``(batch, kv_heads, seq, head_dim)`` keys and values, ``kv_heads`` dividing ``heads`` (grouped-query
attention: query head ``h`` reads kv head ``h // (heads // kv_heads)``, as transformers' ``repeat_kv``).
With ``cu_seqlens`` (packed documents, from the loader's ``document_boundaries``) attention stays inside
each document: flash-attn's varlen kernel, or an SDPA block-diagonal causal mask. ``window`` (a sliding
window) lets each query see itself and the ``window - 1`` keys before it, transformers' mask semantics
(``kv_idx > q_idx - window``; flash-attn's ``window_size=(window - 1, 0)``). ``PHI_ATTENTION``
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


def window_mask(seq: int, window: int, device: torch.device) -> torch.Tensor:
    """(seq, seq) boolean: key ``j`` visible to query ``i`` when ``i - window < j <= i``."""
    idx = torch.arange(seq, device=device)
    distance = idx[:, None] - idx[None, :]
    return (distance >= 0) & (distance < window)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout: float = 0.0,
    cu_seqlens: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention; returns (batch, heads, seq, head_dim)."""
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    if heads % kv_heads or v.shape[1] != kv_heads:
        raise ValueError(f"kv heads {kv_heads} (values {v.shape[1]}) must divide query heads {heads}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window is not None and window >= seq:
        window = None  # every key a query can see is inside the window
    if backend(q.device, q.dtype) == "flash":
        flash, varlen = flash_attn_kernels()
        window_size = (-1, -1) if window is None else (window - 1, 0)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # flash-attn wants (batch, seq, heads, dim)
        if cu_seqlens is None:
            return flash(qt, kt, vt, dropout_p=dropout, causal=True, window_size=window_size).transpose(1, 2)
        cu = cu_seqlens.to(q.device, torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        out = varlen(
            qt.reshape(batch * seq, heads, dim),
            kt.reshape(batch * seq, kv_heads, dim),
            vt.reshape(batch * seq, kv_heads, dim),
            cu,
            cu,
            longest,
            longest,
            dropout_p=dropout,
            causal=True,
            window_size=window_size,
        )
        return out.view(batch, seq, heads, dim).transpose(1, 2)
    if kv_heads != heads:  # repeat each kv head for its query heads (transformers repeat_kv), any SDPA kernel
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    mask = None if cu_seqlens is None else document_mask(cu_seqlens, batch, seq, q.device)
    if window is not None:
        band = window_mask(seq, window, q.device)
        mask = band if mask is None else mask & band
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
