"""Train a tiny transformer a few steps with each pattern's generated module; loss must fall.

    python benchmarks/train_check.py [--device cuda] [--steps 150] [--n 2048] [--examples]

By default it trains the benchmark's patterns; --examples trains the default pattern of
every examples/*.attn file instead (compiled from the file, as a user would).

A recall task: 32 random tokens repeated to length n, so attention (not a bigram table)
is needed to lower the loss below log(vocab): the next token is the one 31 positions back.
Prints first and last loss, and whether the loss fell below half of chance (patterns that
reach that key in one layer learn it in ~150 steps; others need two layers and longer).
Exit status 1 if any loss did not decrease.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


import patternc  # noqa: E402
from patterns import PATTERNS  # noqa: E402


class Block(nn.Module):
    def __init__(self, attn, dim: int, heads: int):
        super().__init__()
        self.attn, self.heads = attn, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        B, n, C = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, n, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = self.attn(q, k, v).transpose(1, 2).reshape(B, n, C)
        x = x + self.proj(y)
        return x + self.mlp(self.n2(x))


def train(mod, device: str, steps: int, n: int, dtype) -> tuple:
    torch.manual_seed(0)
    vocab = 64
    heads = getattr(mod, "NUM_HEADS", None) or 2  # a per-head pattern fixes the head count
    dim = 128  # the same model width for every pattern (head dim 128 / heads)
    emb, pos = nn.Embedding(vocab, dim), nn.Embedding(n, dim)
    blocks = nn.ModuleList([Block(mod.attention, dim, heads) for _ in range(2)])
    head = nn.Linear(dim, vocab)
    model = nn.ModuleList([emb, pos, blocks, head]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        period = torch.randint(0, vocab, (4, 32), device=device)
        x = period.repeat(1, -(-n // 32))[:, :n]
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            h = emb(x) + pos(torch.arange(n, device=device))
            for b in blocks:
                h = b(h)
            logits = head(h)[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-5:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--patterns", default="")
    ap.add_argument("--examples", action="store_true", help="train every examples/*.attn file's default pattern")
    args = ap.parse_args()
    ok = True
    if args.examples:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
        jobs = [(f[:-5], os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".attn")]
    else:
        jobs = [(name, f"pattern p_{name} = {PATTERNS[name]}")
                for name in (args.patterns.split(",") if args.patterns else PATTERNS)]
    for name, source in jobs:
        p = patternc.parse(source)
        mod = patternc.load(p, backend="triton")
        first, last = train(mod, args.device, args.steps, args.n, torch.bfloat16)
        fell = last < first
        ok &= fell
        # below half of chance (ln 64 = 4.16) the model uses attention to copy the token 31 back
        copied = "copies via attention" if last < 0.5 * math.log(64) else "near chance: not copying yet"
        print(f"{name:14s} loss {first:.3f} -> {last:.3f} {'decreasing' if fell else 'NOT DECREASING'}"
              f" ({copied})", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
