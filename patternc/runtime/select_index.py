"""`select_blocks(q_index, k_index, *, weights=None) -> Selection`: the fused block indexer.

For a pattern with `select(k, block=b, qblock=qb)` it scores every (query block, key block)
pair and keeps, per query block, the k best key blocks among the *candidates*: the blocks that
the pattern's outer terms allow and its static terms do not already cover (the module's printed
`_select_candidates`), so no slot is spent on the window, the sinks, or blocks after a causal
query block.

The score.  With indexer queries q (B, Hi, n, Di), indexer keys k (B, n, Di) or (B, Hs, n, Di)
(selection head s serves indexer heads s * Hi/Hs ...), optional weights w ((Hi,) or (B, Hi, n);
1 by default) and the key block's mean key k̄_K = mean over j in K of k_j:

    score(Q, K) = sum over rows i of Q, over the indexer heads h of s, of  w[i, h] * ReLU(q[i, h] · k̄_K)

Why this one, of the two the issue names:
- it is DeepSeek's lightning-indexer form (a weighted sum over heads of ReLU'd dot products: sign
  aware, and the head weights let the indexer learn which heads to trust), applied to NSA's
  mean-pooled block keys.  DSA's own pooling, the max of token scores over the block, needs every
  (query, key) product: O(n^2 · Hi · Di) work, 64 times the mean-pooled score's at b = 64, which
  is the whole attention's cost again at long lengths (and the issue asks the indexer to stay
  under 15% of the forward);
- the target it is trained towards, the block mass (`return_block_mass=True`), is a sum over the
  query block's rows and the block's keys; a score that sums over the same rows is compared with
  it directly (KL between the softmax of the scores and the normalised mass), where a max over
  keys follows single outlier keys;
- mean-pooled keys are NSA's compression branch without its MLP, so an NSA-style model's
  compressed keys can be passed as they are.

Ties go to the lower key block index; slots are filled best first, and slots left over (fewer
candidates than k) hold -1.  A running top-k per query block over chunks of key blocks: memory is
O(n·k) plus fixed-size chunks, never an n x n or (n/b) x (n/b) score matrix.  On the CPU (and for
float64) in PyTorch; on CUDA the module's Triton indexer kernel computes the same, one program per
query block, keeping its top k in registers.
"""
from __future__ import annotations

from typing import Optional

import torch

from .selection import Selection
from .spec import Spec

SCORE_ELEMENTS = 1 << 22  # (rows x key blocks x heads) scores per chunk on the PyTorch path
KEY_CHUNK = 64  # key blocks per chunk of the running top-k
INDEX_KEYS = 64  # key blocks per step of the Triton indexer
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_index(spec: Spec, q_index, k_index, weights, what: str = "select_blocks") -> tuple:
    """(B, Hi, n, Di, Hs) of valid indexer inputs; one clear error otherwise."""
    if spec.select is None:
        raise ValueError(f"{what}: pattern {spec.name!r} has no select(...)")
    for name, t in (("q_index", q_index), ("k_index", k_index)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{what}: {name} must be a floating tensor (float16, bfloat16, float32 or "
                            f"float64), got {t.dtype}")
    if q_index.dim() != 4:
        raise ValueError(f"{what}: q_index must have shape (B, Hi, n, Di), got {tuple(q_index.shape)}")
    B, Hi, n, Di = q_index.shape
    if k_index.dim() not in (3, 4) or k_index.shape[0] != B or k_index.shape[-2] != n or k_index.shape[-1] != Di:
        raise ValueError(f"{what}: k_index must have shape ({B}, {n}, {Di}) or ({B}, Hs, {n}, {Di}) to match "
                         f"q_index {tuple(q_index.shape)}, got {tuple(k_index.shape)}")
    Hs = 1 if k_index.dim() == 3 else k_index.shape[1]
    if Hs < 1 or Hi % Hs:
        raise ValueError(f"{what}: indexer query heads ({Hi}) must be a multiple of the key heads ({Hs})")
    if k_index.device != q_index.device or k_index.dtype != q_index.dtype:
        raise ValueError(f"{what}: q_index and k_index must share one device and dtype, got "
                         f"{q_index.device}/{q_index.dtype} and {k_index.device}/{k_index.dtype}")
    if n == 0 or B == 0 or Di == 0 or Hi == 0:
        raise ValueError(f"{what}: empty input, q_index has shape {tuple(q_index.shape)}")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.device != q_index.device:
            raise TypeError(f"{what}: weights must be a tensor on {q_index.device} of shape ({Hi},) or "
                            f"({B}, {Hi}, {n}), or None")
        if tuple(weights.shape) not in ((Hi,), (B, Hi, n)):
            raise ValueError(f"{what}: weights must have shape ({Hi},) or ({B}, {Hi}, {n}), "
                             f"got {tuple(weights.shape)}")
    spec.check_length(n)
    return B, Hi, n, Di, Hs


def block_means(keys: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, Hs, ceil(n / block), Di): each key block's mean key (the last block may be short)."""
    B, Hs, n, Di = keys.shape
    nkb = -(-n // block)
    padded = keys.new_zeros((B, Hs, nkb * block, Di), dtype=dtype)
    padded[:, :, :n] = keys.to(dtype)
    sizes = (torch.clamp(n - torch.arange(nkb, device=keys.device) * block, max=block)).to(dtype)
    return padded.view(B, Hs, nkb, block, Di).sum(3) / sizes[:, None]


def _candidates(spec: Spec, n: int, qb0: int, qb1: int, kb0: int, kb1: int, device) -> torch.Tensor:
    """(query blocks qb0..qb1-1, key blocks kb0..kb1-1) bool: the pattern's candidate rule."""
    _, block, qblock = spec.select
    qs = torch.arange(qb0, qb1, device=device)[:, None]
    ks = torch.arange(kb0, kb1, device=device)[None, :]
    a0, b0 = qs * qblock, ks * block
    got = spec.select_candidates(a0, torch.clamp(a0 + qblock - 1, max=n - 1), b0,
                                 torch.clamp(b0 + block - 1, max=n - 1), n)
    return torch.broadcast_to(torch.as_tensor(got, device=device), (qb1 - qb0, kb1 - kb0))


def _keep_best(best_v, best_i, vals, idx, k: int) -> tuple:
    """The k best of both, ties to the lower block index (two stable sorts)."""
    v = torch.cat([best_v, vals], -1)
    i = torch.cat([best_i, idx], -1)
    o = torch.sort(i, dim=-1, stable=True).indices
    v, i = v.gather(-1, o), i.gather(-1, o)
    o = torch.sort(v, dim=-1, descending=True, stable=True).indices[..., :k]
    return v.gather(-1, o), i.gather(-1, o)


def topk_blocks(spec: Spec, q_index, keys, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """The PyTorch indexer: int32 (B, Hs, ceil(n / qblock), k), by chunks of query and key blocks."""
    K, block, qblock = spec.select
    B, Hi, n, Di = q_index.shape
    Hs = keys.shape[1]
    per = Hi // Hs
    ct = torch.float64 if q_index.dtype == torch.float64 else torch.float32
    nqb, nkb = -(-n // qblock), -(-n // block)
    dev = q_index.device
    means = block_means(keys, block, ct)
    w = torch.ones((B, Hi, n), dtype=ct, device=dev) if weights is None else \
        torch.broadcast_to(weights.to(ct)[:, None] if weights.dim() == 1 else weights.to(ct), (B, Hi, n))
    best_v = torch.full((B, Hs, nqb, K), float("-inf"), dtype=ct, device=dev)
    best_i = (nkb + torch.arange(K, device=dev)).expand(B, Hs, nqb, K).clone()  # placeholders sort last
    qc = max(1, SCORE_ELEMENTS // (qblock * KEY_CHUNK * Hi * B))  # query blocks per chunk
    for k0 in range(0, nkb, KEY_CHUNK):
        k1 = min(nkb, k0 + KEY_CHUNK)
        kbar = means[:, :, k0:k1].repeat_interleave(per, 1)  # (B, Hi, C, Di)
        for q0 in range(0, nqb, qc):
            q1 = min(nqb, q0 + qc)
            r0, r1 = q0 * qblock, min(n, q1 * qblock)
            s = torch.relu(torch.matmul(q_index[:, :, r0:r1].to(ct), kbar.transpose(-1, -2)))
            s = s * w[:, :, r0:r1, None]  # (B, Hi, rows, C)
            rows = s.new_zeros((B, Hi, (q1 - q0) * qblock, k1 - k0))
            rows[:, :, :r1 - r0] = s
            score = rows.view(B, Hs, per, q1 - q0, qblock, k1 - k0).sum((2, 4))  # (B, Hs, q blocks, C)
            ok = _candidates(spec, n, q0, q1, k0, k1, dev)
            score = torch.where(ok, score, torch.full((), float("-inf"), dtype=ct, device=dev))
            idx = torch.arange(k0, k1, device=dev).expand(B, Hs, q1 - q0, k1 - k0)
            kept = _keep_best(best_v[:, :, q0:q1], best_i[:, :, q0:q1], score, idx, K)
            best_v[:, :, q0:q1], best_i[:, :, q0:q1] = kept
    return torch.where(best_v > float("-inf"), best_i, -1).to(torch.int32)


def index_blocks(spec: Spec, q_index: torch.Tensor, k_index: torch.Tensor, *,
                  weights: Optional[torch.Tensor] = None) -> Selection:
    """The k key blocks of highest score for every query block (module doc), as a Selection that
    every layer using this pattern may share.  No gradient flows through the choice; train the
    indexer on `attention(..., return_block_mass=True)`."""
    B, Hi, n, Di, Hs = _check_index(spec, q_index, k_index, weights)
    keys = k_index[:, None] if k_index.dim() == 3 else k_index
    with torch.no_grad():
        if spec.select_index is not None and q_index.is_cuda and q_index.dtype != torch.float64 and Di <= 256:
            blocks = launch_index(spec, q_index, keys, weights)
        else:
            blocks = topk_blocks(spec, q_index, keys, weights)
    return Selection(blocks)


def index_scores(spec: Spec, q_index: torch.Tensor, k_index: torch.Tensor, blocks, *,
                 weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The score of every listed block (module doc), differentiable: (B, Hs, query blocks, k),
    -inf in empty slots.  What an indexer is trained with: a KL (or cross-entropy) between the
    softmax of these scores and the normalised block mass that attention(..., blocks=...,
    return_block_mass=True) gives for the same slots (summed over the query heads a selection
    head serves), as DSA trains its lightning indexer."""
    B, Hi, n, Di, Hs = _check_index(spec, q_index, k_index, weights, "block_scores")
    t = blocks.blocks if isinstance(blocks, Selection) else blocks
    _, block, qblock = spec.select
    nqb = -(-n // qblock)
    if not isinstance(t, torch.Tensor) or tuple(t.shape[:3]) != (B, Hs, nqb) or t.dim() != 4:
        raise ValueError(f"block_scores: blocks must have shape ({B}, {Hs}, {nqb}, k) to match the indexer inputs, "
                         f"got {tuple(getattr(t, 'shape', ()))}")
    keys = k_index[:, None] if k_index.dim() == 3 else k_index
    per = Hi // Hs
    means = block_means(keys, block, q_index.dtype if q_index.dtype == torch.float64 else torch.float32)
    listed = t.to(torch.int64)
    picked = means.gather(2, listed.clamp(min=0).flatten(2)[..., None].expand(-1, -1, -1, Di))
    picked = picked.view(B, Hs, nqb, t.shape[3], Di).repeat_interleave(per, 1)  # (B, Hi, nqb, k, Di)
    rows = q_index.new_zeros((B, Hi, nqb * qblock, Di), dtype=means.dtype)
    rows[:, :, :n] = q_index.to(means.dtype)
    s = torch.relu(torch.einsum("bhqrd,bhqkd->bhqrk", rows.view(B, Hi, nqb, qblock, Di), picked))
    if weights is not None:
        w = weights.to(means.dtype)
        w = w[None, :, None, None] if w.dim() == 1 else \
            torch.nn.functional.pad(w, (0, nqb * qblock - n)).view(B, Hi, nqb, qblock)
        s = s * w[..., None]
    score = s.sum(3).view(B, Hs, per, nqb, -1).sum(2)
    return torch.where(listed >= 0, score, torch.full((), float("-inf"), dtype=score.dtype, device=score.device))


def launch_index(spec: Spec, q_index, keys, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """The module's Triton indexer: one program per (batch element, selection head, query block)."""
    K, block, qblock = spec.select
    B, Hi, n, Di = q_index.shape
    Hs = keys.shape[1]
    nqb, nkb = -(-n // qblock), -(-n // block)
    means = block_means(keys, block, torch.float32).to(q_index.dtype).contiguous()
    q = q_index.contiguous()
    if weights is None:
        w, w_mode = q.new_ones((1,), dtype=torch.float32), 0
    else:
        w = weights.to(torch.float32).contiguous()
        w_mode = 1 if weights.dim() == 1 else 2
    out = torch.empty((B, Hs, nqb, K), dtype=torch.int32, device=q.device)
    A = spec.length_args(n)
    kpad = max(16, 1 << (K - 1).bit_length())
    spec.select_index[(nqb, B * Hs)](
        QI=q, KM=means, W=w, OUT=out, n=n, NKB=nkb, HS=Hs, **A,
        HI=Hi, PER=Hi // Hs, DI=Di, BDI=max(16, 1 << (Di - 1).bit_length()), QBLK=qblock, BLK=block, K=K,
        KPAD=kpad, BKB=INDEX_KEYS, W_MODE=w_mode, num_warps=4)
    return out
