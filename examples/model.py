"""A tiny transformer that uses a patternc-generated attention module.

The model only calls the module's `attention(q, k, v)` with q, k, v shaped
(batch, heads, n, head_dim), so any backend (reference, flex, triton) and any
pattern can be dropped in.  It trains for a few steps on a synthetic task and
prints the loss after every step.

The task is a shifted copy: the input is a sequence of random tokens and the
target at position i is the input token at position i - shift.  Solving it
needs attention from query i to key i - shift, so the loss only falls well
below log(vocab) when the pattern allows that pair for most queries (shift 1
suits causal and windowed patterns; a dilated pattern with dilation d needs a
shift that is a multiple of d).

Two ways to get the attention module:

    # compile and import in memory (patternc.load)
    python examples/model.py --attn examples/longformer.attn --backend reference --steps 20 --n 256
    python examples/model.py --attn examples/strided.attn -D s=32 --backend reference --n 512
    python examples/model.py --attn examples/bigbird.attn --backend triton --device cuda --n 4096

    # import a file written by `patternc compile`
    patternc compile examples/streaming.attn --backend reference -o /tmp/streaming_ref.py
    python examples/model.py --module /tmp/streaming_ref.py --n 256

A per-head pattern fixes the number of heads; the model then uses the
pattern's head count (module.NUM_HEADS) instead of --heads.  A stack of
layers (`stack` in the .attn file) fixes the depth: block i takes layer i's
attention, `module.layer(i)`, and the model has module.NUM_LAYERS blocks.  The flex backend
trains only on CUDA (FlexAttention has no backward pass on CPU).  On CPU the
triton backend's module runs its exact sparse PyTorch path (or its kernels in
Triton's interpreter with TRITON_INTERPRET=1).

With the defaults, a pattern that allows most pairs at this length (e.g.
longformer's w=256 at n=256, which is dense) learns the task more slowly than
a narrow one (try -D w=16): the narrow window tells the model where to look.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------- getting the attention module

def import_module_file(path: str):
    """Import a module written by `patternc compile` from its file."""
    if not os.path.isfile(path):
        raise SystemExit(f"model.py: --module {path}: no such file")
    name = "patternc_compiled_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton's JIT looks kernels up through their module
    spec.loader.exec_module(module)
    return module


def parse_defines(items) -> dict:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"model.py: -D {item}: expected NAME=VALUE, e.g. -D w=64")
        try:
            out[key.strip()] = int(value.strip(), 10)
        except ValueError:
            raise SystemExit(f"model.py: -D {item}: the value must be an integer") from None
    return out


def get_attention_module(args):
    if args.module:
        if args.attn or args.define or args.pattern:
            raise SystemExit("model.py: --module cannot be combined with --attn, --pattern or -D "
                             "(a compiled module has its pattern built in)")
        return import_module_file(args.module)
    import patternc

    try:
        return patternc.load(args.attn, pattern=args.pattern, backend=args.backend, **parse_defines(args.define))
    except patternc.PatternError as e:
        raise SystemExit(e.format()) from None


# ---------------------------------------------------------------- the model

class Block(nn.Module):
    """Pre-norm transformer block whose attention is the generated module's attention()."""

    def __init__(self, attn_module, dim: int, heads: int, attn_dtype: torch.dtype):
        super().__init__()
        self.attn_module = attn_module
        self.heads = heads
        self.attn_dtype = attn_dtype
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # (B, n, dim) -> (B, heads, n, head_dim), the layout attention() expects
        q, k, v = (t.reshape(B, n, self.heads, dim // self.heads).transpose(1, 2).to(self.attn_dtype)
                   for t in (q, k, v))
        out = self.attn_module.attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, n, dim).to(x.dtype)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


def layer_attention(module, i: int):
    """Block i's attention: layer i of a stack module, or the module's one pattern."""
    return module.layer(i) if hasattr(module, "layer") else module


class TinyTransformer(nn.Module):
    def __init__(self, attn_module, vocab: int, n: int, dim: int, heads: int, layers: int,
                 attn_dtype: torch.dtype):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(n, dim)
        self.blocks = nn.ModuleList(Block(layer_attention(attn_module, i), dim, heads, attn_dtype)
                                    for i in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make_batch(batch: int, n: int, vocab: int, shift: int, gen: torch.Generator, device) -> tuple:
    """Random tokens; the target at position i is the token at i - shift (-100: no target)."""
    tokens = torch.randint(0, vocab, (batch, n), generator=gen)
    target = torch.full_like(tokens, -100)
    target[:, shift:] = tokens[:, : n - shift]
    return tokens.to(device), target.to(device)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a tiny transformer with a patternc attention module.")
    src = p.add_argument_group("attention module (one of)")
    src.add_argument("--attn", help="a .attn file, compiled and loaded with patternc.load")
    src.add_argument("--module", help="a Python file written by `patternc compile`")
    p.add_argument("--pattern", "-p", help="pattern name in the .attn file (default: the last one)")
    p.add_argument("-D", dest="define", action="append", metavar="NAME=VALUE",
                   help="set a pattern parameter (repeatable), like `patternc -D`")
    p.add_argument("--backend", default="reference", choices=("reference", "flex", "triton"),
                   help="backend for --attn (default reference)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="dtype of q, k, v (default float32 on CPU, bfloat16 on CUDA); weights stay float32")
    p.add_argument("--n", type=int, default=256, help="sequence length (default 256)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=4, help="attention heads (a per-head pattern sets its own)")
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--shift", type=int, default=1, help="target at i is the input at i - shift (default 1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if (args.attn is None) == (args.module is None):
        p.error("give exactly one of --attn FILE.attn or --module FILE.py")
    if args.n < 2 or not 1 <= args.shift < args.n:
        p.error("need n >= 2 and 1 <= shift < n")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    attn_dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    module = get_attention_module(args)
    if hasattr(module, "make_mask_mod") and device.type != "cuda":
        raise SystemExit("model.py: the flex backend cannot train on CPU (FlexAttention has no backward there); "
                         "use --device cuda, or the reference or triton backend")
    heads, layers = args.heads, args.layers
    name = f"stack {module.STACK_NAME!r} of {module.NUM_LAYERS} layers" if hasattr(module, "layer") \
        else f"pattern {module.PATTERN_NAME!r}"
    if hasattr(module, "layer"):
        layers = module.NUM_LAYERS
    num_heads = layer_attention(module, 0).spec.num_heads if hasattr(module, "layer") else \
        getattr(module, "NUM_HEADS", None)
    if num_heads is not None:
        if heads != num_heads:
            print(f"{name} is per-head: using its {num_heads} heads")
        heads = num_heads
    dim = heads * args.head_dim

    torch.manual_seed(args.seed)
    model = TinyTransformer(module, args.vocab, args.n, dim, heads, layers, attn_dtype).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    params = sum(t.numel() for t in model.parameters())
    source = args.module or f"{args.attn} ({args.backend})"
    print(f"{name} from {source}; n={args.n}, heads={heads}, dim={dim}, "
          f"layers={layers}, {params} parameters, device={device}, q/k/v dtype={str(attn_dtype)[6:]}")
    if (num_heads or 1) * args.n * args.n <= 1 << 25 and hasattr(module, "mask"):
        try:
            density = layer_attention(module, 0).mask(args.n).float().mean().item()
        except ValueError as e:  # the pattern is not valid at this length
            raise SystemExit(f"model.py: {e}") from None
        print(f"allowed pairs{' in layer 0' if hasattr(module, 'layer') else ''}: {density:.2%} of "
              f"{args.n}x{args.n}; chance loss = ln({args.vocab}) = "
              f"{math.log(args.vocab):.4f}")

    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        tokens, target = make_batch(args.batch, args.n, args.vocab, args.shift, gen, device)
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), target.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"step {step:4d}/{args.steps}  loss {value:.4f}  ({(time.perf_counter() - t0) * 1000:.0f} ms)",
              flush=True)
        if not math.isfinite(value):
            print("model.py: the loss is not finite", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
