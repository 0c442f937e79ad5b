"""Draw the pictures used by docs/language.md and docs/tutorial.md.

Each picture is the dense mask of one expression at a small length (query i
down, key j across, an allowed pair dark), with the tile grid a kernel would
use drawn over it.  Masks come from patternc.semantics, the definition of the
language, so the pictures show what a pattern means rather than what some
backend computes.

    .venv/bin/python docs/make_pictures.py            # writes docs/img/*.png
    .venv/bin/python docs/make_pictures.py --list     # names and expressions only

The output is deterministic (no timestamps in the PNGs), so regenerating
without changes to the language leaves the files byte-identical.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

import patternc  # noqa: E402
from patternc import ir, semantics  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MAX_BYTES = 60 * 1024

# (file name, expression or (example file, pattern, overrides), n, tile)
PRIMITIVES = [
    ("all", "all", 64, 16),
    ("none", "none", 64, 16),
    ("causal", "causal", 64, 16),
    ("local", "local(4)", 64, 16),
    ("local_dilated", "local(4, dilation=3)", 64, 16),
    ("band", "band(2, 9)", 64, 16),
    ("band_lo", "band(lo=-3)", 64, 16),
    ("global", "global(6)", 64, 16),
    ("global_at", "global(at=[10, 40])", 64, 16),
    ("sink", "sink(4)", 64, 16),
    ("queries", "queries(16, 40)", 64, 16),
    ("keys", "keys(16, 40)", 64, 16),
    ("stride", "stride(8)", 64, 16),
    ("block", "block(16)", 64, 16),
    ("summary", "summary(16, 4)", 64, 16),
    ("fixed", "fixed(16, 4)", 64, 16),
    ("random", "random(2, block=8, seed=0)", 64, 16),
    ("rows_mod", "rows_mod(4, 1)", 64, 16),
    ("rows_mod_longnet", "block(32) & stride(4) & rows_mod(4, 1)", 64, 16),
    ("select", "causal & (local(8) | select(2, block=16))", 128, 16),
]

OPERATORS = [
    ("op_union", "local(3) | global(4)", 64, 16),
    ("op_inter", "causal & local(8)", 64, 16),
    ("op_diff", "causal - local(8)", 64, 16),
    ("op_precedence", "causal & local(6) | sink(4)", 64, 16),
]

EXAMPLES = [
    ("ex_longformer", ("longformer.attn", "longformer", {"w": 16, "g": 8}), 256, 32),
    ("ex_bigbird", ("bigbird.attn", "bigbird", {"b": 16, "r": 2}), 256, 32),
    ("ex_strided", ("strided.attn", "strided", {"s": 16}), 256, 32),
    ("ex_fixed", ("fixed.attn", "fixed_sparse", {"l": 32, "c": 4}), 256, 32),
    ("ex_sliding_window", ("sliding_window.attn", "sliding_window", {"w": 48}), 256, 32),
    ("ex_streaming", ("streaming.attn", "streaming", {"w": 32}), 256, 32),
    ("ex_dilated", ("dilated.attn", "dilated", {"w": 8, "d": 4}), 256, 32),
    ("ex_prefix_lm", ("prefix_lm.attn", "prefix_lm", {"p": 96}), 256, 32),
    ("ex_per_head_0", ("per_head.attn", "per_head", {"w": 24, "s": 16}, 0), 256, 32),
    ("ex_per_head_4", ("per_head.attn", "per_head", {"w": 24, "s": 16}, 4), 256, 32),
    ("ex_per_head_6", ("per_head.attn", "per_head", {"w": 24, "s": 16}, 6), 256, 32),
    ("ex_longnet_heads_1", ("longnet.attn", "longnet_heads", {"s": 32}, 1), 256, 32),
]

_CMAP = ListedColormap(["#ffffff", "#1f3b73"])
_SELECT_CMAP = ListedColormap(["#ffffff", "#1f3b73", "#c9d6ee"])  # none, allowed, where selections may fall


def example_selection(n: int, k: int, qblock: int, block: int):
    """The selection drawn for `select`: query block qb lists (3 qb + 1) % nkb, (5 qb + 6) % nkb, ..."""
    import numpy as np

    nkb = -(-n // block)
    qb = np.arange(-(-n // qblock))[:, None]
    mult = np.array([3, 5, 7, 11][:k])[None, :]
    add = np.array([1, 6, 2, 5][:k])[None, :]
    return (mult * qb + add) % nkb


def _resolve(spec):
    """(mask (n, n) bool at length n, title) for an expression or an example."""
    if isinstance(spec, str):
        return patternc.parse(f"pattern p = {spec}\n"), 0, spec
    fname, name, params, *head = spec
    p = patternc.parse(ROOT / "examples" / fname, name, **params)
    title = f"{name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    h = head[0] if head else 0
    if p.num_heads is not None:
        title += f", head {h}"
    return p, h, title


def draw(spec, n: int, tile: int, path: Path) -> str:
    pattern, head, title = _resolve(spec)
    expr = pattern.at(n)
    cmap, image = _CMAP, None
    if ir.has_select(expr):  # an example selection (dark) and where any selection may fall (pale)
        k, b, qb = (e.value for e in ir.int_args(ir.selects(expr)[0]))
        mask = semantics.dense_mask_numpy(expr, n, head=head, selection=example_selection(n, k, qb, b))
        region = semantics.dense_mask_numpy(ir.outer_part(expr), n, head=head) & ~mask
        cmap, image = _SELECT_CMAP, mask.astype("int8") + 2 * region
    else:
        mask = semantics.dense_mask_numpy(expr, n, head=head)
    fig, ax = plt.subplots(figsize=(2.8, 3.1), dpi=120)
    try:
        ax.imshow(mask if image is None else image, cmap=cmap, vmin=0, vmax=cmap.N - 1, interpolation="nearest",
                  extent=(0, n, n, 0))
        for t in range(tile, n, tile):
            ax.axhline(t, color="#e07b39", lw=0.6)
            ax.axvline(t, color="#e07b39", lw=0.6)
        ticks = list(range(0, n + 1, n // 4))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("key j", fontsize=7, labelpad=2)
        ax.set_ylabel("query i", fontsize=7, labelpad=2)
        shown = title if len(title) <= 34 else title[:32] + "..."
        ax.set_title(shown, fontsize=7.5, family="monospace", pad=6)
        density = mask.mean()
        fig.text(0.5, 0.02, f"n={n}, tile={tile}, {density:.0%} allowed", ha="center", fontsize=6, color="#555555")
        fig.subplots_adjust(left=0.16, right=0.95, top=0.80, bottom=0.07)
        fig.savefig(path, format="png", metadata={"Software": None}, pil_kwargs={"optimize": True})
    finally:
        plt.close(fig)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path}: {size} bytes is more than the {MAX_BYTES} byte budget for a docs picture")
    return title


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "img"), help="output folder (default docs/img)")
    ap.add_argument("--list", action="store_true", help="print what would be drawn and exit")
    args = ap.parse_args(argv)
    jobs = PRIMITIVES + OPERATORS + EXAMPLES
    if args.list:
        for name, spec, n, tile in jobs:
            print(f"{name}.png  n={n} tile={tile}  {spec}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, spec, n, tile in jobs:
        path = out / f"{name}.png"
        title = draw(spec, n, tile, path)
        total += path.stat().st_size
        print(f"{os.path.relpath(path)}  {path.stat().st_size // 1024 + 1} KiB  {title}")
    print(f"{len(jobs)} pictures, {total // 1024} KiB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
