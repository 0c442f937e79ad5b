"""Learned block selection: an NSA/DSA-style indexer trained with the block-mass target.

The attention pattern is a window, two sinks and k blocks that the model chooses at run time:

    causal & (sink(2) | local(w) | select(k, block=16))

An *indexer* (small query and key projections, Di = 16, and a weight per indexer head) scores
the key blocks of every query block; `select_blocks` keeps the k best, and attention reads them
as `blocks=`.  The selection itself has no gradient, so the indexer learns from what the
attention did with the blocks it was given: `attention(..., return_block_mass=True)` returns the
probability mass each listed block received, summed over the query block's rows, and the
indexer's scores for the same blocks (`block_scores`) are pulled towards it with a KL loss, as
DeepSeek's DSA trains its lightning indexer.  During training half of the slots are the
indexer's choice and half are random candidates (exploration), so blocks it ranks low still get
a target.

The data plants where attention should look: in every sequence each query block is given a
"topic" that one earlier key block (beyond the window) carries too, so the main attention's mass
concentrates there.  The main attention is frozen (as in DSA's indexer warm-up); only the
indexer trains.  Every few steps the script prints the *overlap*: the share of the true top-k
mass blocks (the mass of every candidate block, from one attention call that lists them all)
that the indexer's own top k finds.  It starts near chance and rises.

    python examples/select_model.py                 # CPU, about a minute
    python examples/select_model.py --steps 40      # the short run tests/test_examples.py makes
    python examples/select_model.py --device cuda   # the Triton kernels and indexer kernel

On the CPU the module runs its exact sparse PyTorch path (no Triton needed).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import patternc

PATTERN = "pattern learned(w = 16, k = 2) = causal & (sink(2) | local(w) | select(k, block=16))"


def make_batch(B: int, n: int, dim: int, g: torch.Generator, device) -> torch.Tensor:
    """(B, n, dim) inputs: noise, plus a topic vector shared by each query block and one earlier
    key block outside the window (the block the main attention should find)."""
    nb = n // 16
    x = 0.5 * torch.randn(B, n, dim, generator=g)
    topics = F.normalize(torch.randn(B, nb, dim, generator=g), dim=-1) * 3.0
    for Q in range(3, nb):
        target = torch.randint(0, Q - 2, (B,), generator=g)  # beyond the window of w = 16
        for z in range(B):
            x[z, Q * 16:(Q + 1) * 16] += topics[z, Q]
            x[z, target[z] * 16:(target[z] + 1) * 16] += topics[z, Q]
    return x.to(device)


class Indexer(nn.Module):
    """Indexer queries (B, Hi, n, Di), shared indexer keys (B, n, Di) and a weight per head."""

    def __init__(self, dim: int, heads: int = 2, di: int = 16):
        super().__init__()
        self.heads, self.di = heads, di
        self.q = nn.Linear(dim, heads * di, bias=False)
        self.k = nn.Linear(dim, di, bias=False)
        self.w = nn.Parameter(torch.ones(heads))

    def forward(self, x: torch.Tensor) -> tuple:
        B, n, _ = x.shape
        return self.q(x).view(B, n, self.heads, self.di).transpose(1, 2), self.k(x), self.w


def candidates_of(attn, n: int, device) -> torch.Tensor:
    """(query blocks, key blocks) bool: the blocks selecting can add a pair to (the pattern's rule)."""
    nb = -(-n // 16)
    qs = torch.arange(nb, device=device)[:, None] * 16
    ks = torch.arange(nb, device=device)[None, :] * 16
    got = attn.SPEC.select_candidates(qs, torch.clamp(qs + 15, max=n - 1), ks, torch.clamp(ks + 15, max=n - 1), n)
    return torch.broadcast_to(torch.as_tensor(got, device=device), (nb, nb))


def explore(top: torch.Tensor, cand: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """The indexer's best k // 2 blocks plus random other candidates: (B, 1, query blocks, k)."""
    B, _, nb, _ = top.shape
    out = torch.full((B, 1, nb, k), -1, dtype=torch.int32)
    for z in range(B):
        for Q in range(nb):
            mine = [b for b in top[z, 0, Q].tolist() if b >= 0][: k // 2]
            rest = [b for b in cand[Q].nonzero().flatten().tolist() if b not in mine]
            pick = torch.randperm(len(rest), generator=g)[: k - len(mine)].tolist()
            chosen = mine + [rest[p] for p in pick]
            out[z, 0, Q, :len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
    return out.to(top.device)


def overlap(pred: torch.Tensor, mass_all: torch.Tensor, cand: torch.Tensor, k: int) -> float:
    """Share of the true top-k mass blocks (over all candidates) that the prediction lists."""
    hit = total = 0
    true = mass_all.masked_fill(~cand, -1.0).topk(k, -1).indices  # (B, nb, k)
    for z in range(pred.shape[0]):
        for Q in range(pred.shape[2]):
            if int(cand[Q].sum()) < k:
                continue  # too few candidates to choose from
            hit += len(set(pred[z, 0, Q].tolist()) & set(true[z, Q].tolist()))
            total += k
    return hit / max(total, 1)


def run(steps: int = 200, n: int = 256, batch: int = 4, dim: int = 32, heads: int = 2, k: int = 2,
        lr: float = 3e-2, device: str = "cpu", seed: int = 0, every: int = 20, quiet: bool = False) -> list:
    """Train the indexer; returns [(step, overlap)] measured every `every` steps on fresh data."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    explore_k = 2 * k  # training slots: the indexer's k best and k random candidates
    train = patternc.load(PATTERN, backend="triton", k=explore_k)
    choose = patternc.load(PATTERN, backend="triton", k=k)  # the model's own selection (evaluation)
    every_block = patternc.load(PATTERN, backend="triton", k=n // 16)  # lists every block: the dense target
    main_q = torch.eye(dim, device=device).repeat(1, heads)  # the frozen main attention's projections
    main_k = main_q.clone()
    indexer = Indexer(dim).to(device)
    opt = torch.optim.Adam(indexer.parameters(), lr=lr)
    cand = candidates_of(train, n, device)
    all_blocks = torch.arange(n // 16, dtype=torch.int32, device=device).expand(1, 1, n // 16, n // 16)

    def heads_of(x, w):
        return (x @ w).view(x.shape[0], n, heads, dim).transpose(1, 2)

    history = []
    t0 = time.time()
    for step in range(steps + 1):
        x = make_batch(batch, n, dim, g, device)
        q, kk = heads_of(x, main_q), heads_of(x, main_k)
        qi, ki, w = indexer(x)
        if step % every == 0:  # evaluation: the indexer's top k against the true top-k mass blocks
            with torch.no_grad():
                pred = choose.select_blocks(qi, ki, weights=w).blocks
                blocks = all_blocks.expand(batch, 1, -1, -1).contiguous()
                _, mass = every_block.attention(q, kk, kk, blocks=blocks, return_block_mass=True)
                history.append((step, overlap(pred, mass.sum(1), cand, k)))
                if not quiet:
                    print(f"step {step:4d}  overlap with the true top-{k} mass blocks {history[-1][1]:.2f}  "
                          f"({time.time() - t0:.0f} s)", flush=True)
        if step == steps:
            break
        with torch.no_grad():
            top = train.select_blocks(qi, ki, weights=w).blocks
            blocks = explore(top.cpu(), cand.cpu(), explore_k, g).to(device)
            _, mass = train.attention(q, kk, kk, blocks=blocks, return_block_mass=True)
        target = mass.sum(1, keepdim=True)  # over the query heads this selection serves
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-9)
        scores = train.block_scores(qi, ki, blocks, weights=w)
        listed = blocks >= 0
        logp = torch.log_softmax(scores.masked_fill(~listed, -1e9) / 16.0, -1)  # / qblock: a mean over rows
        usable = listed.any(-1) & (target.sum(-1) > 0)
        loss = -(target * logp.masked_fill(~listed, 0.0)).sum(-1)[usable].mean()  # KL up to a constant
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--k", type=int, default=2, help="selected blocks per query block")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    hist = run(args.steps, args.n, args.batch, k=args.k, device=args.device, seed=args.seed,
               every=max(1, args.steps // 10))
    print(f"overlap {hist[0][1]:.2f} -> {hist[-1][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
