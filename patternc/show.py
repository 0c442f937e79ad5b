"""Pictures of a pattern: an ASCII map for the terminal and a PNG (SVG, PDF, ...) with the tile grid.

A kernel pays per tile, not per pair, so both pictures show which tiles are
full (no mask arithmetic needed), partial (masked) or empty (skipped).  A pattern
with `select(...)` is drawn as its static part, with the region where run-time
selected blocks may fall (the outer pattern minus the static part) marked.  Counts
come from the semantics oracle evaluated in row chunks, so memory stays small
even where the n x n mask would not (n up to MAX_N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import ir, semantics

MAX_N = 16384
MAX_BLOCKS = 2048  # per side: the per-tile counts are a MAX_BLOCKS**2 array at most
EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class Counts:
    """Allowed pairs per (row block, column block) and each block's size."""

    counts: object  # np.ndarray (nb, nb) of int64
    areas: object  # np.ndarray (nb, nb) of int64
    block: int

    @property
    def states(self):
        """EMPTY / PARTIAL / FULL per block."""
        import numpy as np

        s = np.full(self.counts.shape, PARTIAL, dtype=np.int8)
        s[self.counts == 0] = EMPTY
        s[self.counts == self.areas] = FULL
        return s


def _head_expr(expr, head: int):
    return expr.for_head(head) if isinstance(expr, ir.Heads) else expr


def block_counts(expr, n: int, block: int, head: int = 0) -> Counts:
    """Count allowed pairs per block of a concrete (n-substituted) IR, a few rows at a time."""
    import numpy as np

    expr = _head_expr(expr, head)
    starts = np.arange(0, n, block)
    sizes = np.minimum(starts + block, n) - starts
    counts = np.zeros((len(starts), len(starts)), dtype=np.int64)
    j = np.arange(n, dtype=np.int64)[None, :]
    rows_per_chunk = max(block, ((1 << 22) // max(n, 1)) // block * block)
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        i = np.arange(r0, r1, dtype=np.int64)[:, None]
        m = np.broadcast_to(semantics.allowed(expr, i, j, n), (r1 - r0, n)).astype(np.int64)
        per_col = np.add.reduceat(m, starts, axis=1)  # (rows, nb)
        row_starts = np.arange(0, r1 - r0, block)
        counts[r0 // block: r0 // block + len(row_starts)] = np.add.reduceat(per_col, row_starts, axis=0)
    return Counts(counts, np.outer(sizes, sizes), block)


def dense_mask(expr, n: int, head: int = 0):
    """The n x n boolean mask, filled a few rows at a time (no n x n int64 temporaries)."""
    import numpy as np

    expr = _head_expr(expr, head)
    out = np.empty((n, n), dtype=bool)
    j = np.arange(n, dtype=np.int64)[None, :]
    step = max(1, (1 << 22) // max(n, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        i = np.arange(r0, r1, dtype=np.int64)[:, None]
        out[r0:r1] = np.broadcast_to(semantics.allowed(expr, i, j, n), (r1 - r0, n))
    return out


def first_empty_rows(expr, n: int, limit: int = 5, head: int = 0, max_pairs: Optional[int] = None) -> tuple:
    """(number of query rows with no allowed key, the first `limit` of them, whether every row
    was looked at).  With `max_pairs`, stop once `limit` rows are found or the budget is spent."""
    import numpy as np

    expr = _head_expr(expr, head)
    j = np.arange(n, dtype=np.int64)[None, :]
    total, first = 0, []
    step = max(1, (1 << 22) // max(n, 1))
    for r0 in range(0, n, step):
        if max_pairs is not None and (len(first) >= limit or r0 * n >= max_pairs):
            return total, first, False
        i = np.arange(r0, min(n, r0 + step), dtype=np.int64)[:, None]
        empty = ~np.broadcast_to(semantics.allowed(expr, i, j, n), (len(i), n)).any(axis=1)
        rows = np.nonzero(empty)[0] + r0
        total += len(rows)
        first += [int(r) for r in rows[: max(0, limit - len(first))]]
    return total, first, True


def _cell_size(n: int, tile: int, width: int) -> int:
    """Pairs per character: small enough to fit `width` columns, aligned with tiles if possible."""
    need = -(-n // width)
    if need <= tile:
        return next(d for d in range(need, tile + 1) if tile % d == 0)
    return -(-need // tile) * tile


_CELL = {EMPTY: " ", PARTIAL: "+", FULL: "#"}
_TILE = {EMPTY: ".", PARTIAL: "+", FULL: "#"}
SELECTABLE = 3  # (select patterns) no static pair, but selected blocks may fall here
_CELL[SELECTABLE] = ":"
_TILE[SELECTABLE] = "s"


def _static_and_region(expr):
    """(static part, region where selected blocks may fall or None) of a concrete expression."""
    if not ir.has_select(expr):
        return expr, None
    static = ir.static_part(expr)
    return static, ir.inter([ir.outer_part(expr), ir.neg(static)])


def _mark(states, selectable):
    """States with SELECTABLE where the static part has nothing and `selectable` (a boolean array
    of the same shape, or None) says selected blocks may fall."""
    if selectable is None:
        return states
    out = states.copy()
    out[(states == EMPTY) & selectable] = SELECTABLE
    return out


def _group_states(states, g: int):
    """Merge g x g tiles into one character: full or empty only if all of them are."""
    import numpy as np

    nb = states.shape[0]
    ng = -(-nb // g)
    pad = ng * g - nb

    def all_of(value):
        x = np.pad(states == value, ((0, pad), (0, pad)), constant_values=True)
        return x.reshape(ng, g, ng, g).all(axis=(1, 3))

    out = np.full((ng, ng), PARTIAL, dtype=np.int8)
    out[all_of(EMPTY)] = EMPTY
    out[all_of(FULL)] = FULL
    return out


def summary_line(tiles: Counts, n: int) -> str:
    import numpy as np

    nnz = int(tiles.counts.sum())
    st = tiles.states
    return (f"n={n}, tile={tiles.block}: {nnz} of {n * n} pairs allowed ({nnz / (n * n):.2%}); "
            f"tiles: {int(np.sum(st == FULL))} full, {int(np.sum(st == PARTIAL))} partial, "
            f"{int(np.sum(st == EMPTY))} empty of {st.size}")


def ascii_picture(expr, n: int, tile: int = 128, head: int = 0, width: int = 64, title: str = "") -> str:
    """The mask downsampled to about `width` columns with the tile grid, then the tile map."""
    expr, region = _static_and_region(_head_expr(expr, head))
    cell = _cell_size(n, tile, width)
    cells = block_counts(expr, n, cell, head)
    tiles = cells if cell == tile else block_counts(expr, n, tile, head)
    out = [title] if title else []
    out.append(summary_line(tiles, n))
    if region is not None:
        rc = block_counts(region, n, cell)
        rt = rc if cell == tile else block_counts(region, n, tile)
        out.append(f"static part shown; selected blocks may add up to {int(rt.counts.sum())} more pairs "
                   "in the region marked ':' (tiles 's')")
    out.append("")
    per_tile = tile // cell if tile % cell == 0 else 0
    grid = per_tile >= 2 and tiles.states.shape[0] <= 32
    legend = f"mask, 1 char = {cell}x{cell} pairs: '#' all allowed, '+' some, ' ' none"
    if region is not None:
        legend += ", ':' selected blocks may fall here"
    out.append(legend + ("; lines are tile borders:" if grid else ":"))
    cs = _mark(cells.states, None if region is None else rc.counts > 0)
    nc = cs.shape[0]

    def rule() -> str:
        if not grid:
            return "+" + "-" * nc + "+"
        return "+" + "+".join("-" * len(range(c, min(nc, c + per_tile))) for c in range(0, nc, per_tile)) + "+"

    out.append(rule())
    for r in range(nc):
        if grid and r and r % per_tile == 0:
            out.append(rule())
        chars = [_CELL[int(s)] for s in cs[r]]
        if grid:
            chars = ["|".join("".join(chars[c:c + per_tile]) for c in range(0, nc, per_tile))]
        out.append("|" + "".join(chars) + "|")
    out.append(rule())
    ts = tiles.states
    g = max(1, -(-ts.shape[0] // width))
    shown = _group_states(ts, g) if g > 1 else ts
    if region is not None:
        rs = rt.states if g == 1 else _group_states(rt.states, g)
        shown = _mark(shown, rs != EMPTY)
    what = f"1 char = {g}x{g} tiles" if g > 1 else "1 char = 1 tile"
    out.append("")
    sel = ", 's' selected blocks only" if region is not None else ""
    out.append(f"tiles of {tile}x{tile} ({what}): '#' full, '+' partial (masked), '.' empty (skipped){sel}:")
    for r in range(shown.shape[0]):
        out.append("  " + "".join(_TILE[int(s)] for s in shown[r]))
    return "\n".join(out) + "\n"


# File extensions `save_picture` writes, and their matplotlib format names.  Those in
# NEEDS_PILLOW are written through pillow (a matplotlib dependency, but checked anyway).
PICTURE_FORMATS = {"png": "png", "svg": "svg", "svgz": "svgz", "pdf": "pdf", "eps": "eps", "ps": "ps",
                   "jpg": "jpeg", "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff", "webp": "webp"}
NEEDS_PILLOW = ("jpeg", "tiff", "webp")


def picture_format(path: str) -> str:
    """The format named by the extension of `path`, or ValueError with one clear message."""
    import os

    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in PICTURE_FORMATS:
        accepted = ", ".join("." + e for e in PICTURE_FORMATS)
        what = f"unknown picture format '.{ext}'" if ext else "no file extension to pick the picture format"
        raise ValueError(f"{what}; use one of: {accepted}")
    fmt = PICTURE_FORMATS[ext]
    if fmt in NEEDS_PILLOW:
        import importlib.util

        if importlib.util.find_spec("PIL") is None:
            raise ValueError(f"writing .{ext} needs pillow (pip install pillow); .png, .svg and .pdf do not")
    return fmt


def _blend(colour: str, under, alpha: float):
    """`colour` laid over the RGB values `under` with opacity alpha."""
    import matplotlib.colors
    import numpy as np

    return alpha * np.array(matplotlib.colors.to_rgb(colour)) + (1 - alpha) * np.asarray(under)


def save_picture(expr, n: int, path: str, tile: int = 128, head: int = 0, title: str = "", fmt: str = "png") -> None:
    """A picture of the mask (density per pixel) with the tile grid; full and partial tiles
    shaded.  PNG unless `fmt` names another format (see PICTURE_FORMATS).

    Writes to `path` as given, whatever its extension (the CLI passes a temporary file and
    renames it), so the format is explicit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    expr, region = _static_and_region(_head_expr(expr, head))
    cell = max(1, -(-n // 1024))
    cells = block_counts(expr, n, cell, head)
    tiles = block_counts(expr, n, tile, head)
    density = cells.counts / cells.areas
    st = tiles.states
    nb = st.shape[0]
    # One opaque image, the tile shading blended in here: PostScript has no transparency.
    rgb = matplotlib.colormaps["Greys"](np.clip(density / 1.6, 0, 1))[..., :3]
    centre = np.minimum(np.arange(density.shape[0]) * cell + cell // 2, n - 1) // tile  # tile of each cell
    cell_states = st[np.ix_(centre, centre)]
    for state, colour in ((FULL, "tab:green"), (PARTIAL, "tab:orange")):
        rgb[cell_states == state] = _blend(colour, rgb[cell_states == state], 0.3)
    handles = []
    if region is not None:  # where selected blocks may fall: a light blue wash by density
        rd = block_counts(region, n, cell).counts / cells.areas
        where = rd > 0
        rgb[where] = _blend("tab:blue", rgb[where], 0.15 + 0.35 * np.clip(rd[where], 0, 1)[:, None])
        handles.append(Patch(facecolor=_blend("tab:blue", np.ones(3), 0.4), label="selected blocks may fall"))
    fig, ax = plt.subplots(figsize=(7.5, 8), dpi=100)
    try:
        ax.imshow(rgb, extent=(0, n, n, 0), interpolation="nearest")
        if nb <= 128:
            grid = _blend("tab:blue", np.ones(3), 0.6)
            for t in range(tile, n, tile):
                ax.axhline(t, color=grid, lw=0.5)
                ax.axvline(t, color=grid, lw=0.5)
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_xlabel("key j")
        ax.set_ylabel("query i")
        ax.set_title((title + "\n" if title else "") + summary_line(tiles, n), fontsize=8)
        ax.legend(handles=[Patch(facecolor=_blend("tab:green", np.ones(3), 0.4), label="full tile"),
                           Patch(facecolor=_blend("tab:orange", np.ones(3), 0.4), label="partial tile"),
                           Patch(facecolor="white", edgecolor="grey", label="empty tile")] + handles,
                  loc="upper right", fontsize=7, framealpha=1)
        fig.tight_layout()
        fig.savefig(path, format=fmt)
    finally:
        plt.close(fig)
