"""The Triton backend: a self-contained module with the pattern compiled into its kernels.

For every pass of the lowering plan (patternc.lower) it writes three kernels:
forward, dq (query-major) and dk/dv (key-major, so dk/dv need no atomics and are
deterministic; for random-block and strided plans the dk/dv kernel also adds dq
atomically, which measured faster there).  Each kernel walks, per tile, the closed-form
ranges of the pass's terms, skips tiles an earlier term already visited, and
runs the tile body without any mask arithmetic when a term proves the tile full.
"""
from __future__ import annotations

import os
import string
from typing import Optional
from importlib import resources

from patternc import ir, printer
from patternc.frontend import Pattern
from patternc.intexpr import Const, to_python
from patternc.lower import Code, Pass, Plan, Space, TileRanges, atomic_dq, choose_bwd_settings, choose_forward_tiles, \
    choose_union_walks, \
    count_keys_below, full_span, fused_forward, heavy_spans, key_major, key_position, longest_walks_first, narrow_columns, plan, \
    query_major, query_position
from patternc.semantics import HASH_MUL, HASH_QB, HASH_SEED, HASH_T


def _template() -> string.Template:
    text = resources.files("patternc.backends").joinpath("templates/triton_module.py.tmpl").read_text()
    return string.Template(text)


# Experiments only: PATTERNC_UNION_WALK=two (or one) walks every union twice (or once) instead of
# what lower.choose_union_walks decides per kernel.
UNION_WALK = os.environ.get("PATTERNC_UNION_WALK", "")
# Experiments only: PATTERNC_NARROW=0 walks narrow key columns (sinks, global columns) as whole
# key tiles, as before their own step (benchmarks/NOTES.md, v15).
NARROW = os.environ.get("PATTERNC_NARROW", "") != "0"


def _open_mask(keep: str, query_major: bool) -> list:
    """`keep` for a loop that walks full and partial tiles alike: all-true on a full tile (a
    uniform branch: the mask's arithmetic runs on partial tiles only)."""
    shape = "[BM, BN]" if query_major else "[BN, BM]"
    return ["if full:  # every pair allowed", f"    keep = tl.full({shape}, 1, tl.int1)", "else:", f"    {keep}"]


def _indent(lines: list, n: int) -> list:
    return [(" " * n + x) if x else x for x in lines]


# Program ids -> (batch z, query head h, key/value head hk) and the slices they read: shared by
# the two query-major kernels (forward and dq).
QUERY_MAJOR_IDS = [
    "    pid = tl.program_id(0)",
    "    zh = tl.program_id(1)",
    "    z = zh // HC",
    "    h = HEAD0 + zh % HC",
    "    hk = h // GROUP",
]
QUERY_MAJOR_BASES = [
    "offs_d = tl.arange(0, BD)",
    "q_base = Q + z.to(tl.int64) * sq0 + h.to(tl.int64) * sq1",
    "k_base = K + z.to(tl.int64) * sk0 + hk.to(tl.int64) * sk1",
    "v_base = V + z.to(tl.int64) * sv0 + hk.to(tl.int64) * sv1",
]


class _Emitter:
    def __init__(self, pattern: Pattern):
        self.pattern = pattern
        # the forward walks a union with one tile loop where its tiles are 64 rows: two loops'
        # buffers (208 KiB at D = 128) held such a kernel to one 4-warp program per SM; one loop
        # needs 112 KiB, two programs (sm_90 compile; NOTES.md, v7).  128-row tiles are one
        # program per SM either way, and their full tiles keep the mask-free body.
        self.fwd_tiles = choose_forward_tiles(pattern)
        self.fwd_one_loop = self.fwd_tiles[0] == 64
        self.two_walks = (dict.fromkeys(("fwd", "dq", "dkdv"), UNION_WALK == "two") if UNION_WALK in ("one", "two")
                          else choose_union_walks(pattern, fwd_tiles=self.fwd_tiles))
        self.args = printer.ArgTable()
        self.code = Code("triton", self.args)
        self.uses_random = printer.uses_random(pattern.expr)

    # ---- masks ---------------------------------------------------------------------------
    def mask_fn(self, name: str, expr) -> list:
        body = printer.mask_expr(expr, "i", "j", self.args, hash_fn="_random_mask")
        return ["@triton.jit",
                f"def {name}(i, j, n, r__ARGS__):",
                f'    """{_doc(printer.formula(expr))}"""',
                f"    return {body}", "", ""]

    # ---- query-major loops (forward and dq) ---------------------------------------------
    def query_loops(self, p: Pass, mask_name: str, call: str, one_loop: bool = False,
                    two_walks: bool = False, narrow_call: Optional[str] = None) -> list:
        """`call` is the tile call with {keep} and {masked} left open: full tiles pass no mask.
        `narrow_call`: the masked tile call with pointer loads, for narrow key columns' steps."""
        return self.loops(p, "q", mask_name, call.format(keep="0", masked="False"),
                          call.format(keep="keep", masked="True"), bool(heavy_spans(p, "q")), one_loop, two_walks,
                          narrow_call)

    def key_loops(self, p: Pass, mask_name: str, call: str, one_loop: bool = False, two_walks: bool = False) -> list:
        return self.loops(p, "k", mask_name, call.format(keep="0", masked="False"),
                          call.format(keep="keep", masked="True"), bool(heavy_spans(p, "k")), one_loop, two_walks)

    def loops(self, p: Pass, major: str, mask_name: str, full_call: str, masked_call: str,
              window: bool = False, one_loop: bool = False, two_walks: bool = False,
              narrow_call: Optional[str] = None) -> list:
        """Visit every needed tile once.  Interval terms are walked as segments of full tiles
        (no mask, branch-free inner loop) and partial tiles (masked); random terms follow.
        `window`: the walk is clipped to tiles [w_lo, w_hi) (split heavy tiles).
        `one_loop`: where a walk would put two tile loops inside one enclosing loop (the union
        of several terms, a random term's full and partial tiles), it gets one loop whose mask
        is opened for full runs (`_open_mask`).  Triton gives every pipelined loop in a loop
        body its own shared buffers: two such loops double a kernel's shared memory (sm_90,
        D = 128: dq 164 -> 262 KiB, over an SM's 228; dk/dv 99 -> 198 KiB, one program per SM
        instead of two).
        `two_walks`: a union is walked twice instead, its full runs with the mask-free body, then
        its partial tiles: one loop per walk, and walks one after the other share their buffers.
        `narrow_call` (query-major): terms that need a few fixed key columns (`narrow_columns`)
        take a step of their own of as many keys, where no other term's tiles reach them."""
        c, space = self.code, p.space
        q = major == "q"
        T, idx, what = ("BN", "kt", "key") if q else ("BM", "at", "query")
        out: list = []
        spans: list = []  # (term index, TileRanges) of the interval terms
        never_full: set = set()  # terms whose tiles are never certified full: one masked loop
        randoms: list = []
        for ti, t in enumerate(p.terms):
            tr = query_major(t, space, c) if q else key_major(t, space, c)
            out.append(f"# term {ti}: {printer.formula(t.expr())}")
            out.append(f"lo{ti} = {tr.lo}  # first {what} index that can meet this tile")
            out.append(f"hi{ti} = {tr.hi}  # last {what} index")
            if tr.random is not None:
                randoms.append((ti, t, tr))
                continue
            out.append(f"v_lo{ti} = lo{ti} // {T}")
            out.append(f"v_hi{ti} = tl.where(({tr.applies}) & (hi{ti} >= lo{ti}), hi{ti} // {T} + 1, v_lo{ti})")
            fs = full_span(t, space, c, major) if p.first else None
            if fs is None:
                out.append(f"f_lo{ti} = v_lo{ti}  # never certified full: always masked")
                out.append(f"f_hi{ti} = v_lo{ti}")
                never_full.add(ti)
            else:
                out.append(f"f_lo{ti} = tl.minimum(tl.maximum({fs.lo}, v_lo{ti}), v_hi{ti})  # full tiles: no mask")
                out.append(f"f_hi{ti} = tl.where({fs.cond}, tl.minimum(tl.maximum({fs.hi}, f_lo{ti}), v_hi{ti}), "
                           f"f_lo{ti})")
            spans.append((ti, tr))
        if window and spans:
            out.append("# clip every range to this program's window of tiles")
            for ti, _ in spans:
                out += [f"{x}{ti} = tl.minimum(tl.maximum({x}{ti}, w_lo), w_hi)" for x in ("v_lo", "v_hi", "f_lo", "f_hi")]
        if q and narrow_call is not None and NARROW and len(spans) > 1 and not randoms:
            out += self._narrow_steps(p, spans, mask_name, narrow_call)
        keep = (f"keep = {mask_name}(i[:, None], j[None, :], n, r__ARGS__) & (j < n)[None, :]" if q else
                f"keep = {mask_name}(i[None, :], j[:, None], n, r__ARGS__) & (i < n)[None, :]")
        pos = (["b0 = kt * BN", "j = " + key_position(space, c, "(b0 + tl.arange(0, BN))")] if q else
               ["a0 = at * BM", "i = " + query_position(space, c, "(a0 + tl.arange(0, BM))")])
        full_body = pos + [full_call]
        masked_body = pos + [keep, masked_call]
        if len(spans) == 1 and spans[0][0] in never_full:
            # one masked loop: the full and leading loops would be empty (less code to compile)
            (ti, _), = spans
            out += [f"for {idx} in range(v_lo{ti}, v_hi{ti}):  # every tile masked"]
            out += _indent(masked_body, 4)
        elif len(spans) == 1:
            (ti, _), = spans
            # the partial tiles on both sides of the full run share one loop: one copy of the
            # masked body fewer for Triton to compile (sm_90: forward -17%, dk/dv -29%)
            out += [f"before{ti} = f_lo{ti} - v_lo{ti}  # partial tiles before the full run",
                    f"for e_it in range(0, before{ti} + (v_hi{ti} - f_hi{ti})):  # partial tiles, both sides",
                    f"    {idx} = tl.where(e_it < before{ti}, v_lo{ti} + e_it, f_hi{ti} + (e_it - before{ti}))"]
            out += _indent(masked_body, 4)
            out += [f"for {idx} in range(f_lo{ti}, f_hi{ti}):  # full tiles"]
            out += _indent(full_body, 4)
        elif spans:
            ids = [ti for ti, _ in spans]
            big = "2147483647"
            out.append("# walk the union of the terms' tile ranges as segments, each tile once")
            start = _nest("tl.minimum", [f"tl.where(v_hi{k} > v_lo{k}, v_lo{k}, {big})" for k in ids])
            if two_walks and not all(k in never_full for k in ids):
                out.append(f"start = {start}")
                start = "start"
            out.append(f"cur = {start}")
            out.append("end = " + _nest("tl.maximum", [f"tl.where(v_hi{k} > v_lo{k}, v_hi{k}, 0)" for k in ids]))
            out.append("while cur < end:")
            inside = " | ".join(f"((v_lo{k} <= cur) & (cur < v_hi{k}))" for k in ids)
            full_terms = [f"(f_lo{k} <= cur) & (cur < f_hi{k})" for k in ids]
            in_full = " | ".join(f"({x})" for x in full_terms)
            seg_full = _nest("tl.maximum", [f"tl.where((f_lo{k} <= cur) & (cur < f_hi{k}), f_hi{k}, cur)"
                                            for k in ids])
            vis = _nest("tl.maximum", [f"tl.where((v_lo{k} <= cur) & (cur < v_hi{k}), v_hi{k}, cur)" for k in ids])
            nxt_full = _nest("tl.minimum", [f"tl.where((f_lo{k} > cur) & (f_hi{k} > f_lo{k}), f_lo{k}, vis)"
                                            for k in ids])
            nxt = _nest("tl.minimum", [f"tl.where(v_lo{k} > cur, v_lo{k}, end)" for k in ids])
            if all(k in never_full for k in ids):  # no full tiles anywhere: masked segments only
                body = [f"if {inside}:",
                        f"    seg = {vis}",
                        f"    for {idx} in range(cur, seg):  # partial tiles"]
                body += _indent(masked_body, 8)
            elif two_walks:
                # two walks, one pipelined loop each: the union's full runs (no mask), then its
                # partial tiles (masked).  Sequential loops share their shared buffers, two loops
                # inside one walk do not; and full tiles skip the mask's select and registers.
                nxt_fstart = _nest("tl.minimum", [f"tl.where((f_lo{k} > cur) & (f_hi{k} > f_lo{k}), f_lo{k}, end)"
                                                  for k in ids])
                body = [f"if {in_full}:",
                        f"    seg = {seg_full}",
                        f"    for {idx} in range(cur, seg):  # full tiles"]
                body += _indent(full_body, 8)
                body += ["    cur = seg", "else:", f"    cur = {nxt_fstart}  # the next full run"]
                out += _indent(body, 4)
                out.append("cur = start  # then the partial tiles")
                out.append("while cur < end:")
                body = [f"if {inside}:",
                        f"    if {in_full}:",
                        f"        cur = {seg_full}  # walked above",
                        "    else:",
                        f"        vis = {vis}",
                        f"        seg = {nxt_full}",
                        f"        for {idx} in range(cur, seg):  # partial tiles"]
                body += _indent(masked_body, 12)
                body += ["        cur = seg"]
            elif one_loop:
                body = [f"if {inside}:",
                        "    # one loop for a run of full tiles or of partial ones (one set of buffers)",
                        f"    full = {full_terms[0]}"]
                body += [f"    full = full | ({x})" for x in full_terms[1:]]
                body += [f"    vis = {vis}",
                         f"    seg = tl.where(full, {seg_full}, {nxt_full})",
                         f"    for {idx} in range(cur, seg):"]
                body += _indent(pos + _open_mask(keep, q) + [masked_call], 8)
            else:
                body = [f"if {inside}:",
                        f"    if {in_full}:",
                        f"        seg = {seg_full}",
                        f"        for {idx} in range(cur, seg):  # full tiles"]
                body += _indent(full_body, 12)
                body += ["    else:",
                         f"        vis = {vis}",
                         f"        seg = {nxt_full}",
                         f"        for {idx} in range(cur, seg):  # partial tiles"]
                body += _indent(masked_body, 12)
            if not two_walks or all(k in never_full for k in ids):
                body += ["    cur = seg"]
            body += ["else:", f"    cur = {nxt}  # jump the gap to the next range"]
            out += _indent(body, 4)
        for ti, t, tr in randoms:
            prev = [(k, tr2) for k, tr2 in spans] + [(k, tr2) for k, _, tr2 in randoms if k < ti]
            body = self._tile_body(p, ti, t, tr, prev, mask_name, full_call, masked_call, query_major_loop=q,
                                   one_loop=one_loop)
            rb, rr = c.arg(tr.random.b), c.arg(tr.random.r)
            if q:
                out += [f"qb{ti} = a0 // {rb}  # BM divides the random block: one query block per tile",
                        f"nkb{ti} = (n + {rb} - 1) // {rb}",
                        f"picks{ti} = tl.minimum({rr}, nkb{ti})",
                        f"for t in range(0, picks{ti}):",
                        f"    kb = _random_block(qb{ti}, t, nkb{ti}, picks{ti}, {_seed_key(tr.random.seed)})",
                        f"    klo = tl.maximum(kb * {rb}, lo{ti})",
                        f"    khi = tl.minimum(kb * {rb} + {rb} - 1, hi{ti})",
                        "    kt_lo = klo // BN",
                        f"    kt_hi = tl.where(({tr.applies}) & (khi >= klo), khi // BN + 1, kt_lo)"]
                if window:
                    out += ["    kt_lo = tl.minimum(tl.maximum(kt_lo, w_lo), w_hi)",
                            "    kt_hi = tl.minimum(tl.maximum(kt_hi, w_lo), w_hi)"]
                out += ["    for kt in range(kt_lo, kt_hi):"]
                out += _indent(body, 8)
            else:
                out += [f"at_lo{ti} = lo{ti} // BM",
                        f"at_hi{ti} = tl.where(({tr.applies}) & (hi{ti} >= lo{ti}), hi{ti} // BM + 1, at_lo{ti})"]
                if window:
                    out += [f"at_lo{ti} = tl.minimum(tl.maximum(at_lo{ti}, w_lo), w_hi)",
                            f"at_hi{ti} = tl.minimum(tl.maximum(at_hi{ti}, w_lo), w_hi)"]
                key = _seed_key(tr.random.seed)
                out += [
                        f"nkb{ti} = (n + {rb} - 1) // {rb}",
                        f"picks{ti} = tl.minimum({rr}, nkb{ti})",
                        f"kb{ti} = b0 // {rb}  # BN divides the random block: one key block per tile",
                        "# which query blocks picked this key block?  Ask 128 query blocks at once, then",
                        "# visit the few that did (about `picks`), instead of asking every query tile in turn",
                        f"qb_lo{ti} = (at_lo{ti} * BM) // {rb}",
                        f"qb_hi{ti} = (at_hi{ti} * BM + {rb} - 1) // {rb}",
                        f"for qs in range(qb_lo{ti}, qb_hi{ti}, 128):",
                        "    cand = qs + tl.arange(0, 128)",
                        f"    hit = _random_picked(cand, kb{ti}, nkb{ti}, picks{ti}, {key}) & (cand < qb_hi{ti})",
                        "    while tl.max(hit.to(tl.int32), 0) > 0:",
                        "        qb = tl.min(tl.where(hit, cand, 2147483647), 0)",
                        "        hit = hit & (cand != qb)",
                        f"        for at in range(tl.maximum(qb * ({rb} // BM), at_lo{ti}), "
                        f"tl.minimum((qb + 1) * ({rb} // BM), at_hi{ti})):"]
                out += _indent(body, 12)
        return out

    def _narrow_steps(self, p: Pass, spans: list, mask_name: str, call: str) -> list:
        """One NB-key step (pointer loads) for each term that needs at most NB fixed key columns,
        before the walk, when no other term's key tiles reach those columns (so each allowed
        pair is counted once; the union mask applies, cut to the term's columns); the walk then
        skips the term.  Otherwise (early query tiles, whose window reaches the columns) the
        term stays in the walk, as without this."""
        out = []
        for ti, _ in spans:
            nb = narrow_columns(p.terms[ti], p.space)
            if nb is None:
                continue
            others = [k for k, _ in spans if k != ti]
            apart = " & ".join(f"((v_hi{k} <= v_lo{k}) | (v_lo{k} > hi{ti} // BN) | (v_hi{k} <= lo{ti} // BN))"
                               for k in others)
            out += [f"if {nb} < BN:  # term {ti} needs at most {nb} fixed key columns: a step of its own",
                    f"    narrow{ti} = (v_hi{ti} > v_lo{ti}) & {apart}",
                    f"    if narrow{ti}:",
                    f"        b0 = lo{ti}",
                    f"        j = b0 + tl.arange(0, {nb})",
                    f"        keep = {mask_name}(i[:, None], j[None, :], n, r__ARGS__) & "
                    f"((j <= hi{ti}) & (j < n))[None, :]",
                    f"        {call}",
                    f"    v_hi{ti} = tl.where(narrow{ti}, v_lo{ti}, v_hi{ti})  # walked above",
                    f"    f_hi{ti} = tl.where(narrow{ti}, f_lo{ti}, f_hi{ti})"]
        return out

    def _tile_body(self, p: Pass, ti: int, t, tr: TileRanges, prev: list, mask_name: str, full_call: str,
                   masked_call: str, query_major_loop: bool, one_loop: bool = False) -> list:
        c, space = self.code, p.space
        lines = []
        if query_major_loop:
            lines += ["b0 = kt * BN", "b1 = b0 + BN - 1"]
            idx = "kt"
        else:
            lines += ["a0 = at * BM", "a1 = a0 + BM - 1"]
            idx = "at"
        tile_lo, tile_hi = "v_lo", "v_hi"
        seen = []
        for si, sr in prev:
            if sr.random is None:
                seen.append(f"(({idx} >= {tile_lo}{si}) & ({idx} < {tile_hi}{si}))")
            else:
                rb = c.arg(sr.random.b)
                nk = f"(n + {rb} - 1) // {rb}"
                picks = f"tl.minimum({c.arg(sr.random.r)}, {nk})"
                # term si visited this tile iff it applies here, picked its block, and the tile
                # meets si's index range [lo, hi] (which need not start on a tile boundary)
                x0, x1 = ("b0", "b1") if query_major_loop else ("a0", "a1")
                seen.append(f"(_random_picked(a0 // {rb}, b0 // {rb}, {nk}, {picks}, {_seed_key(sr.random.seed)}) "
                            f"& ({sr.applies}) & ({x1} >= lo{si}) & ({x0} <= hi{si}))")
        fulls = []
        if p.first:
            for other in p.terms:
                if other.randoms:
                    continue
                f = query_major(other, space, c).full
                if f != "False":
                    fulls.append(f"({f})" if f != "True" else "True")
            own = query_major(t, space, c).full  # inside its own loop a random tile is a picked tile
            if tr.random is not None and own != "False":
                fulls.append(f"({own})" if own != "True" else "True")
        if query_major_loop:
            pos = "j = " + key_position(space, c, "(b0 + tl.arange(0, BN))")
            keep = f"keep = {mask_name}(i[:, None], j[None, :], n, r__ARGS__) & (j < n)[None, :]"
        else:
            pos = "i = " + query_position(space, c, "(a0 + tl.arange(0, BM))")
            keep = f"keep = {mask_name}(i[None, :], j[:, None], n, r__ARGS__) & (i < n)[None, :]"
        work: list = [pos]
        if fulls:
            inb = "(a1 < LQ) & (b1 < L)"
            anyfull = "True" if "True" in fulls else " | ".join(fulls)
            work.append(f"full = {inb} & ({anyfull})" if anyfull != "True" else f"full = {inb}")
            if one_loop:  # one tile call: its loads are not duplicated in two branches
                work += _open_mask(keep, query_major_loop) + [masked_call]
            else:
                work += ["if full:  # every pair allowed: no mask arithmetic", f"    {full_call}", "else:",
                         f"    {keep}", f"    {masked_call}"]
        else:
            work += [keep, masked_call]
        if seen:
            lines.append(f"seen = {' | '.join(seen)}  # an earlier term already visited this tile")
            lines.append("if seen == 0:")
            lines += _indent(work, 4)
        else:
            lines += work
        return lines

    # ---- kernels ---------------------------------------------------------------------------
    def space_prologue(self, space: Space, major: str, rev: bool = False) -> list:
        """Map the program id to a tile of the pass's index space; `rev`: the walks grow with the
        tile's index, and REV (a launch setting) runs the tiles last-first."""
        c = self.code
        tile = "BM" if major == "q" else "BN"
        if space.kind == "diag":
            m = c.arg(space.m)
            lines = [f"r = pid // PER  # residue class: positions r, r + {m}, r + 2*{m}, ...",
                     "t_idx = pid % PER"]
        else:
            lines = ["r = 0", "t_idx = pid"]
        if rev:
            lines += ["if REV:  # longest walks first: later tiles walk more keys, so launch them first",
                      "    t_idx = PER - 1 - t_idx"]
        lines += self.space_lengths(space)
        if major == "q":
            lines += [f"a0 = t_idx * {tile}", "a1 = a0 + BM - 1",
                      "i = " + query_position(space, c, "(a0 + tl.arange(0, BM))"),
                      "row_ok = (a0 + tl.arange(0, BM)) < LQ"]
        else:
            lines += [f"b0 = t_idx * {tile}", "b1 = b0 + BN - 1",
                      "j = " + key_position(space, c, "(b0 + tl.arange(0, BN))"),
                      "col_ok = (b0 + tl.arange(0, BN)) < L"]
        return lines

    def space_lengths(self, space: Space) -> list:
        """LQ and L: how many query and key positions the space has (in its own order)."""
        c = self.code
        if space.kind == "diag":
            m = c.arg(space.m)
            return [f"LQ = (n - r + {m} - 1) // {m}  # length of this residue class", "L = LQ"]
        if space.kind == "keys":
            return ["LQ = n", f"L = {count_keys_below(space, c, 'n')}  # number of kept key columns"]
        return ["LQ = n", "L = n"]

    @staticmethod
    def tma(p: Pass, side: str) -> str:
        """Whether a tile call may load through the TMA descriptors: where the tile's positions are
        contiguous (key side: tokens in order; query side: every space but residue classes), or a
        residue class, whose rows are one box of a (B, H, n/m, m, D) view when m divides n (the
        host then passes TMA=2).  Elsewhere (kept key columns) the literal False removes the
        descriptor branch from the compiled kernel."""
        ok = p.space.kind in ("identity", "diag") if side == "k" else True
        return "TMA" if ok else "False"

    @staticmethod
    def qtma(p: Pass) -> str:
        """A query-major kernel's own tile (Q, dO) through TMA: where its query positions are
        contiguous (not residue classes) and the host passed descriptors (QTMA)."""
        return "QTMA" if p.space.kind != "diag" else "False"

    @staticmethod
    def jit(p: Pass, major: str, extra: tuple = ()) -> str:
        """Split-capable kernels must not be specialised on the values that differ between their
        normal and split launches, so one compilation serves both (first-call time)."""
        if not heavy_spans(p, major):
            return "@triton.jit"
        return f'@triton.jit(do_not_specialize={["NOUT", "PARTIAL", *extra]!r})'

    def split_lines(self, p: Pass, major: str) -> tuple:
        """(lines after the program ids, window lines): only for passes with global rows/columns.

        A global row's tile walks every key tile.  Its walk is cut into chunks of CH tiles: the
        normal launch does chunk 0, a PARTIAL launch (grid axis 2 = chunk - 1) the others, into
        scratch rows that the host merges.  Every other tile's window is unbounded."""
        if not heavy_spans(p, major):
            return [], []
        # PARTIAL is a runtime 0/1 (not a constexpr): both launches share one compiled kernel.
        # Heavy tiles form up to two ranges [SPLIT0, SPLIT1) and [SPLIT2, SPLIT3); a split
        # launch's program r walks the r-th heavy tile.
        ids = ["    r_idx = pid  # in a split launch: the rank of this program's heavy tile",
               "    first = SPLIT1 - SPLIT0",
               "    heavy_pid = tl.where(pid < first, SPLIT0 + pid, SPLIT2 + pid - first)",
               "    pid = tl.where(PARTIAL != 0, heavy_pid, pid)"]
        win = ["c_idx = tl.program_id(2) + PARTIAL  # chunk: 0 in the normal launch",
               "heavy = ((t_idx >= SPLIT0) & (t_idx < SPLIT1)) | ((t_idx >= SPLIT2) & (t_idx < SPLIT3))",
               "w_lo = tl.where(heavy, c_idx * CH, 0)",
               "w_hi = tl.where(heavy, c_idx * CH + CH, 2147483647)"]
        return ids, win

    @staticmethod
    def out_rows(p: Pass, major: str, pos: str, tile: str) -> list:
        """Rows of the output a program writes: a split launch writes chunk-major scratch rows."""
        if not heavy_spans(p, major):
            return [f"{pos}_out = {pos}"]
        return [f"{pos}_out = {pos} + PARTIAL * ((c_idx - 1) * RS + (r_idx - t_idx) * {tile})"
                "  # split launch: scratch rows, chunk-major, heavy tiles by rank"]

    def fwd_kernel(self, name: str, mask_name: str, p: Pass, more: tuple = (), rev: bool = False) -> list:
        """The forward kernel of pass `p`; `more`: (mask name, pass) of later passes that walk the
        same query tiles (fusable), continued in the same program after p's walk (one online
        softmax, no float32 state between launches, Q loaded once); `rev`: see space_prologue."""
        loops = self.fwd_loops(mask_name, p)
        for mname, mp in more:
            loops += [f"# ---- pass {mp.space.describe()}: same query tile, same running softmax"]
            loops += self.space_lengths(mp.space)
            loops += self.fwd_loops(mname, mp)
        ids, win = self.split_lines(p, "q")
        head = [
            self.jit(p, "q"),
            f"def {name}(Q, K, V, O, OI, LSE, KD, VD, QD, sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,",
            "        so0, so1, so2, so3, n, HTOT, HC, GROUP, HEAD0, PER, NOUT, SPLIT0, SPLIT1, SPLIT2, SPLIT3, CH, RS,",
            "        qk_scale__ARGS__, SEEDED: tl.constexpr, PARTIAL, BM: tl.constexpr, BN: tl.constexpr,",
            "        BD: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr, TMA: tl.constexpr,",
            "        QTMA: tl.constexpr, REV: tl.constexpr):",
            f'    """Forward, {" then ".join(x.space.describe() for x in (p,) + tuple(mp for _, mp in more))}.'
            '\n    SEEDED: continue from the previous pass\'s float32 state in OI (laid out like O;'
            '\n    O may be OI, or the final output in the input dtype)."""',
        ] + QUERY_MAJOR_IDS + ids
        body = self.space_prologue(p.space, "q", rev) + win + QUERY_MAJOR_BASES + [
            "o_base = O + z.to(tl.int64) * so0 + h.to(tl.int64) * so1",
            "lse_base = LSE + (z.to(tl.int64) * HTOT + h) * NOUT",
            f"q = _tile_rows(QD, z, h, a0, r, q_base, i, row_ok, sq2, sq3, offs_d, D, WIDEN, {self.qtma(p)})",
            "if SEEDED:  # continue the online softmax from the previous pass (m = lse, l = 1, acc = out)",
            "    lse_prev = tl.load(lse_base + i, mask=row_ok, other=float('-inf'))",
            "    m_i = lse_prev * 1.4426950408889634",
            "    l_i = tl.where(lse_prev == float('-inf'), 0.0, 1.0)",
            "    oi_base = OI + z.to(tl.int64) * so0 + h.to(tl.int64) * so1",
            "    acc = _load_rows(oi_base, i, row_ok, so2, so3, offs_d, D, False)",
            "else:",
            "    m_i = tl.full([BM], float('-inf'), dtype=tl.float32)",
            "    l_i = tl.zeros([BM], dtype=tl.float32)",
            "    acc = tl.zeros([BM, BD], dtype=tl.float32)",
        ]
        tail = [
            "# epilogue: normalise; rows that saw no key give 0 and lse = -inf",
            "l_safe = tl.where(l_i == 0.0, 1.0, l_i)",
            "out = acc / l_safe[:, None]",
            "lse = tl.where(l_i == 0.0, float('-inf'), (m_i + tl.log2(l_safe)) * 0.6931471805599453)",
        ] + self.out_rows(p, "q", "i", "BM") + [
            "o_ptrs = o_base + i_out.to(tl.int64)[:, None] * so2 + offs_d[None, :] * so3",
            "tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))",
            "tl.store(lse_base + i_out, lse, mask=row_ok)",
        ]
        return head + _indent(body + loops + tail, 4) + ["", ""]

    def fwd_loops(self, mask_name: str, p: Pass) -> list:
        call = ("acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, KD, VD, z, hk, b0, r, k_base, v_base, sk2, sk3, sv2, sv3, "
                "j, {keep}, n, qk_scale, offs_d, D, {masked}, PREC, WIDEN, {tma})")
        return self.query_loops(
            p, mask_name, call.replace("{tma}", self.tma(p, "k")), one_loop=self.fwd_one_loop,
            two_walks=self.two_walks["fwd"], narrow_call=call.format(keep="keep", masked="True", tma="False"))

    def dq_kernel(self, name: str, mask_name: str, p: Pass, rev: bool = False) -> list:
        call = ("dq = _dq_tile(dq, q, do, lse2, delta, KD, VD, z, hk, b0, r, k_base, v_base, sk2, sk3, sv2, sv3, j, "
                "{keep}, n, qk_scale, offs_d, D, {masked}, PREC, WIDEN, {tma})")
        loops = self.query_loops(
            p, mask_name, call.replace("{tma}", self.tma(p, "k")), one_loop=True, two_walks=self.two_walks["dq"],
            narrow_call=call.format(keep="keep", masked="True", tma="False"))
        ids, win = self.split_lines(p, "q")
        head = [
            self.jit(p, "q", ("PRO",)),
            f"def {name}(Q, K, V, DO, DQ, LSE2, DELTA, O, LSE, KD, VD, QD, DOD, sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3,",
            "        sv0, sv1, sv2, sv3, sdo0, sdo1, sdo2, sdo3, sdq0, sdq1, sdq2, sdq3, so0, so1, so2, so3, n, HTOT, HC,",
            "        GROUP, HEAD0, PER, NOUT, SPLIT0, SPLIT1, SPLIT2, SPLIT3, CH, RS, qk_scale__ARGS__, sm_scale, PRO,",
            "        ACCUM: tl.constexpr, PARTIAL,",
            "        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,",
            "        WIDEN: tl.constexpr, TMA: tl.constexpr, QTMA: tl.constexpr, REV: tl.constexpr):",
            f'    """dq, {p.space.describe()}.  ACCUM: add to DQ (float32) so passes combine without atomics.'
            '\n    PRO (the first pass\'s normal launch): first compute and store each row\'s delta = sum(O * dO)'
            '\n    and log-sum-exp in log2 units, which the later launches read (no prologue kernel)."""',
        ] + QUERY_MAJOR_IDS + ids
        body = self.space_prologue(p.space, "q", rev) + win + QUERY_MAJOR_BASES + [
            "do_base = DO + z.to(tl.int64) * sdo0 + h.to(tl.int64) * sdo1",
            "dq_base = DQ + z.to(tl.int64) * sdq0 + h.to(tl.int64) * sdq1",
            "row_base = (z.to(tl.int64) * HTOT + h) * n",
            f"q = _tile_rows(QD, z, h, a0, r, q_base, i, row_ok, sq2, sq3, offs_d, D, WIDEN, {self.qtma(p)})",
            f"do = _tile_rows(DOD, z, h, a0, r, do_base, i, row_ok, sdo2, sdo3, offs_d, D, WIDEN, {self.qtma(p)})",
            "if PRO != 0:",
            "    o_rows = _load_rows(O + z.to(tl.int64) * so0 + h.to(tl.int64) * so1, i, row_ok, so2, so3, offs_d, D, False)",
            "    delta = tl.where(row_ok, tl.sum(o_rows.to(tl.float32) * do.to(tl.float32), 1), 0.0)",
            "    lse_e = tl.load(LSE + row_base + i, mask=row_ok, other=0.0)",
            "    lse2 = tl.where(row_ok & (lse_e != float('-inf')), lse_e * 1.4426950408889634, float('inf'))",
            "    tl.store(DELTA + row_base + i, delta, mask=row_ok)",
            "    tl.store(LSE2 + row_base + i, lse2, mask=row_ok)",
            "else:",
            "    lse2 = tl.load(LSE2 + row_base + i, mask=row_ok, other=float('inf'))",
            "    delta = tl.load(DELTA + row_base + i, mask=row_ok, other=0.0)",
            "dq = tl.zeros([BM, BD], dtype=tl.float32)",
        ]
        tail = self.out_rows(p, "q", "i", "BM") + [
            "dq_ptrs = dq_base + i_out.to(tl.int64)[:, None] * sdq2 + offs_d[None, :] * sdq3",
            "io_mask = row_ok[:, None] & (offs_d[None, :] < D)",
            "dq = dq * sm_scale",
            "if ACCUM:  # a later pass or head group adds to what earlier launches wrote (float32)",
            "    dq += tl.load(dq_ptrs, mask=io_mask, other=0.0)",
            "tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=io_mask)",
        ]
        return head + _indent(body + loops + tail, 4) + ["", ""]

    def dkdv_kernel(self, name: str, mask_name: str, p: Pass) -> list:
        loops = self.key_loops(
            p, mask_name,
            "dk, dv = _dkdv_tile(dk, dv, k, v, QD, DOD, z, h, a0, r, q_base, do_base, sq2, sq3, sdo2, sdo3, lse_base, "
            "delta_base, dq_base, sdq2, sdq3, DQD, sm_scale, i, {keep}, n, qk_scale, offs_d, D, {masked}, PREC, "
            f"WIDEN, {self.tma(p, 'q')}, FUSED, {'RED_TMA' if self.qtma(p) == 'QTMA' else 'False'})",
            one_loop=True, two_walks=self.two_walks["dkdv"])
        ids, win = self.split_lines(p, "k")
        head = [
            self.jit(p, "k"),
            f"def {name}(Q, K, V, DO, DK, DV, LSE2, DELTA, QD, DOD, DQ, DQD, sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3,",
            "        sv0, sv1, sv2, sv3, sdo0, sdo1, sdo2, sdo3, sdk0, sdk1, sdk2, sdk3, sdq0, sdq1, sdq2, sdq3, n, HTOT,",
            "        KC, GROUP, H0, H1, KV0, PER, NOUT, SPLIT0, SPLIT1, SPLIT2, SPLIT3, CH, RS, qk_scale__ARGS__,",
            "        sm_scale, ACCUM: tl.constexpr, PARTIAL, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,",
            "        D: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr, TMA: tl.constexpr,",
            "        FUSED: tl.constexpr, RED_TMA: tl.constexpr):",
            f'    """dk and dv, {p.space.describe()}: one key tile, every query head of its group.',
            '    FUSED: dq too, added atomically into DQ (float32), and no dq kernel runs."""',
            "    pid = tl.program_id(0)",
            "    zk = tl.program_id(1)",
            "    z = zk // KC",
            "    hk = KV0 + zk % KC",
        ] + ids
        body = self.space_prologue(p.space, "k") + win + [
            "offs_d = tl.arange(0, BD)",
            "k_base = K + z.to(tl.int64) * sk0 + hk.to(tl.int64) * sk1",
            "v_base = V + z.to(tl.int64) * sv0 + hk.to(tl.int64) * sv1",
            "k = _load_rows(k_base, j, col_ok, sk2, sk3, offs_d, D, WIDEN)",
            "v = _load_rows(v_base, j, col_ok, sv2, sv3, offs_d, D, WIDEN)",
            "dk = tl.zeros([BN, BD], dtype=tl.float32)",
            "dv = tl.zeros([BN, BD], dtype=tl.float32)",
            "h_first = tl.maximum(hk * GROUP, H0)",
            "h_last = tl.minimum(hk * GROUP + GROUP - 1, H1)",
            "for h_it in range(h_first, h_last + 1):  # the query heads that share this key/value head",
            "    h = z.to(tl.int64) * 0 + h_it  # a 64-bit tensor under the compiler and the interpreter alike",
            "    q_base = Q + z.to(tl.int64) * sq0 + h.to(tl.int64) * sq1",
            "    do_base = DO + z.to(tl.int64) * sdo0 + h.to(tl.int64) * sdo1",
            "    lse_base = LSE2 + (z.to(tl.int64) * HTOT + h) * n",
            "    delta_base = DELTA + (z.to(tl.int64) * HTOT + h) * n",
            "    dq_base = DQ + z.to(tl.int64) * sdq0 + h.to(tl.int64) * sdq1",
        ]
        tail = self.out_rows(p, "k", "j", "BN") + [
            "dk_base = DK + z.to(tl.int64) * sdk0 + hk.to(tl.int64) * sdk1",
            "dv_base = DV + z.to(tl.int64) * sdk0 + hk.to(tl.int64) * sdk1",
            "kv_ptrs = j_out.to(tl.int64)[:, None] * sdk2 + offs_d[None, :] * sdk3",
            "io_mask = col_ok[:, None] & (offs_d[None, :] < D)",
            "dk = dk * sm_scale",
            "if ACCUM:",
            "    dk += tl.load(dk_base + kv_ptrs, mask=io_mask, other=0.0)",
            "    dv += tl.load(dv_base + kv_ptrs, mask=io_mask, other=0.0)",
            "tl.store(dk_base + kv_ptrs, dk.to(DK.dtype.element_ty), mask=io_mask)",
            "tl.store(dv_base + kv_ptrs, dv.to(DV.dtype.element_ty), mask=io_mask)",
        ]
        return head + _indent(body, 4) + _indent(loops, 8) + _indent(tail, 4) + ["", ""]

    # ---- host-side helpers -------------------------------------------------------------------
    def torch_mask_fn(self, cases) -> list:
        """`_mask_head(h, i, j, n)`: the same printed mask on torch tensors (CPU fallback, mask())."""
        bodies = [printer.mask_expr(expr, "i", "j", self.args, hash_fn="_random_pick") for _, expr in cases]
        lines = ["def _mask_head(h: int, i, j, n: int):",
                 '    """Allowed (i, j) pairs for head h, from the same printed formula as the kernels."""',
                 "    A = _length_args(n)"]
        for name in self.args.names.values():  # every name exists now: the bodies were printed first
            lines.append(f"    {name} = A[{name!r}]")
        for ((h0, h1), _), body in zip(cases, bodies):
            lines.append(f"    if {h0} <= h <= {h1}:" if len(cases) > 1 else "    if True:")
            lines.append(f"        return ({body}) & (i >= 0) & (j >= 0)")
        lines.append('    raise ValueError(f"head {h} is outside this pattern\'s heads")')
        return lines

    def space_lambdas(self, p: Pass, tma_fwd: Optional[bool] = None, rev: tuple = (False, False)) -> str:
        d = {"space": repr(p.space.kind)}
        d["rev"] = repr({"fwd": rev[0], "dq": rev[1]})  # kernels that run their tiles last-first with REV
        # which kernels load through TMA descriptors (the host builds them only for those)
        d["tma"] = repr({"fwd": self.tma(p, "k") == "TMA" if tma_fwd is None else tma_fwd,
                         "dq": self.tma(p, "k") == "TMA", "dkdv": self.tma(p, "q") == "TMA",
                         "rows": self.qtma(p) == "QTMA"})
        for major in ("q", "k"):
            spans = heavy_spans(p, major)
            if spans:  # global rows (columns): tiles whose walks are split
                d[f"heavy_{major}"] = "lambda n: [" + ", ".join(f"({to_python(a)}, {to_python(b)})"
                                                                for a, b in spans) + "]"
        if p.space.kind == "diag":
            m = p.space.m
            d["m"] = f"lambda A: {m.value}" if isinstance(m, Const) else f"lambda A: A[{self.args(m)!r}]"
        if p.space.kind == "keys":
            pc = Code("python", self.args)
            expr = count_keys_below(p.space, pc, "n")
            d["kept"] = f"lambda n, A: {expr}"
        return ", ".join(f"{k!r}: {v}" for k, v in d.items())


RANDOM_JIT = '''

# ---- random(r, block=b, seed): the same stratified hash as the language's definition ----------

@triton.jit
def _hash32(key, qb, t):
    """32-bit xorshift-multiply hash, computed in int64 exactly as the reference does."""
    zero = tl.zeros([], dtype=tl.int64)  # promotes plain ints (interpreter loop indices) to int64 tensors
    x = (key + (qb + zero) * {qb_mul} + (t + zero) * {t_mul}) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * {mul}) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * {mul}) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _random_block(qb, t, nkb, picks, key):
    """The key block that query block qb picks in segment t (segments split the key blocks evenly)."""
    start = t * nkb // picks
    length = (t + 1) * nkb // picks - start
    return (start + (_hash32(key, qb, t) % length)).to(tl.int32)


@triton.jit
def _random_picked(qb, kb, nkb, picks, key):
    """Did query block qb pick key block kb?  Closed form: kb's segment has one pick.
    An n-dependent count can be 0 at some lengths: then nothing is picked."""
    p1 = tl.maximum(picks, 1)
    t = ((kb + 1) * p1 - 1) // nkb
    return (picks > 0) & (_random_block(qb, t, nkb, p1, key) == kb)


@triton.jit
def _random_mask(i, j, r, b, seed, n):
    nkb = (n + b - 1) // b
    picks = tl.minimum(r, nkb)
    return _random_picked(i // b, j // b, nkb, picks, (seed * {seed_mul} + 1) & 0xFFFFFFFF)
'''


def emit(pattern: Pattern) -> str:
    """The module's source text (deterministic for a given pattern)."""
    from patternc import __version__

    e = _Emitter(pattern)
    longest = longest_walks_first(pattern, tiles=e.fwd_tiles)
    if isinstance(pattern.expr, ir.Heads):
        cases = [((c.lo, c.hi), c.expr) for c in pattern.expr.cases]
    else:
        cases = [((0, None), pattern.expr)]
    kernels: list = []
    case_rows = []
    random_block = None
    fused_dq = False
    for ci, ((h0, h1), expr) in enumerate(cases):
        pl: Plan = plan(expr)
        fused_dq |= atomic_dq(pl)  # dq by atomics where that measured faster (template: _FUSED_DQ)
        if pl.random_block is not None:
            import math
            random_block = pl.random_block if random_block is None else math.gcd(random_block, pl.random_block)
        descs = []
        if not pl.passes:
            kernels.append(f"# heads {h0}..{h1 if h1 is not None else 'H-1'}: the pattern is empty; "
                           "every row gives 0 and lse = -inf\n")
        fuse = fused_forward(pl)
        # query tiles last-first where their walks grow (not for split global rows, whose
        # launches map program ids to heavy tiles)
        grow, grow_fused = longest[ci] if longest and len(longest[ci][0]) == len(pl.passes) \
            else ([False] * len(pl.passes), False)
        grow = [g and not heavy_spans(p, "q") for g, p in zip(grow, pl.passes)]
        grow_fused = grow_fused and not any(heavy_spans(p, "q") for p in pl.passes)
        tags = [f"c{ci}_p{pi}" if len(cases) > 1 else f"p{pi}" for pi in range(len(pl.passes))]
        for pi, p in enumerate(pl.passes):
            tag = tags[pi]
            kernels.append(f"# ---- pass {pi}"
                           + (f" (heads {h0}..{h1})" if h1 is not None else "")
                           + f": {p.space.describe()}\n"
                           + f"# pairs: {_doc(printer.formula(p.mask))}\n")
            kernels.append("\n".join(e.mask_fn(f"_mask_{tag}", p.mask)))
            if pi == 0 and fuse:  # one forward kernel walks every pass's tiles
                more = tuple((f"_mask_{t}", x) for t, x in zip(tags[1:], pl.passes[1:]))
                kernels.append("\n".join(e.fwd_kernel(f"_fwd_{tag}", f"_mask_{tag}", p, more, grow_fused)))
            elif not fuse:
                kernels.append("\n".join(e.fwd_kernel(f"_fwd_{tag}", f"_mask_{tag}", p, rev=grow[pi])))
            kernels.append("\n".join(e.dq_kernel(f"_dq_{tag}", f"_mask_{tag}", p, grow[pi])))
            kernels.append("\n".join(e.dkdv_kernel(f"_dkdv_{tag}", f"_mask_{tag}", p)))
            fwd = f"_fwd_{tag}" if pi == 0 or not fuse else "None"
            tma_fwd = any(e.tma(x, "k") == "TMA" for x in pl.passes) if fuse and pi == 0 else None
            descs.append("{" + f"'fwd': {fwd}, 'dq': _dq_{tag}, 'dkdv': _dkdv_{tag}, "
                         + e.space_lambdas(p, tma_fwd, (grow_fused if fuse else grow[pi], grow[pi])) + "}")
        case_rows.append(f"    (({h0}, {h1}), [\n        " + ",\n        ".join(descs) + "]),")
    torch_mask = "\n".join(e.torch_mask_fn(cases))  # may name more arguments: before the host function
    names = list(e.args.names.values())
    kernel_text = "\n".join(kernels).replace("__ARGS__", "".join(", " + a for a in names))
    host = [printer.ISQRT_SOURCE, "", "", e.args.host_function(), "", "", printer.checks_function(pattern, e.args)]
    if e.uses_random:
        host += ["", "", _random_pick_with_key()]
    host += ["", "", torch_mask, "", "", f"_ARG_NAMES = {names!r}"]
    header = _header(pattern, __version__)
    t = _template()
    text = t.substitute(
        header=header,
        pattern_source=printer.py_string(pattern.source),
        pattern_name=repr(pattern.name),
        num_heads=repr(pattern.num_heads),
        host_support="\n".join(host),
        random_jit=RANDOM_JIT.format(seed_mul=hex(HASH_SEED), qb_mul=hex(HASH_QB), t_mul=hex(HASH_T), mul=hex(HASH_MUL))
        if e.uses_random else "",
        kernels=kernel_text,
        cases="[\n" + "\n".join(case_rows) + "\n]",
        random_block=repr(random_block),
        fwd_tiles=repr(e.fwd_tiles),
        bwd_tiles=_bwd_tiles(pattern),
        fused_dq=int(fused_dq),
        op_namespace=f"patternc_{pattern.hash}",
    )
    return _wrap_long_lines(_fix_arg_refs(text, names))


def _bwd_tiles(pattern: Pattern) -> str:
    """The module's backward settings per head-dim bucket (64, 128), as Python source."""
    rows = []
    for d in (64, 128):
        cfg = {k: v for k, v in choose_bwd_settings(pattern, D=d).items() if v is not None}
        rows.append(f"{d}: dict(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")")
    return "{" + ", ".join(rows) + "}"


def _wrap_long_lines(text: str, width: int = 100) -> str:
    """Break generated code lines longer than `width` after commas inside brackets (Python joins
    such lines implicitly), so a kernel engineer can read the module without scrolling.  Lines
    with string literals, inside docstrings or with no comma inside brackets stay as they are."""
    out, in_doc = [], False
    for line in text.splitlines():
        quotes = line.count('"""')
        if in_doc or quotes or len(line) <= width or "'" in line or '"' in line:
            in_doc ^= quotes % 2 == 1
            out.append(line)
            continue
        code, comment = _split_comment(line)
        if not code.strip():  # a comment-only line (aligned under code above): nothing to break
            out.append(line)
            continue
        indent = " " * (len(code) - len(code.lstrip()) + 8)
        pieces, start, depth, last = [], 0, 0, None
        for k, ch in enumerate(code):
            depth += ch in "([{"
            depth -= ch in ")]}"
            if ch == "," and depth > 0 and k + 1 < len(code) and code[k + 1] == " ":
                if k - start + (len(indent) if pieces else 0) > width - 10 and last is not None:
                    pieces.append(code[start:last + 1])
                    start = last + 2
                last = k
        pieces.append(code[start:])
        out.append("\n".join([pieces[0]] + [indent + x for x in pieces[1:]]) + comment)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _split_comment(line: str) -> tuple:
    """(code, "  # comment" or ""): the comment starts at a '#' outside brackets."""
    depth = 0
    for k, ch in enumerate(line):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "#" and depth == 0:
            return line[:k].rstrip(), "  " + line[k:]
    return line, ""


def _fix_arg_refs(text: str, names: list) -> str:
    import re

    # space lambdas refer to arguments through the dict A; only the _CASES table is rewritten
    head, marker, tail = text.partition("\n_CASES = [")
    if not marker:
        return text

    def repl(m):
        return _with_args_exact(m.group(0), names)
    return head + marker + re.sub(r"'kept': lambda n, A: [^}]*", repl, tail)


def _with_args_exact(expr: str, names: list) -> str:
    import re

    if not names:
        return expr
    pat = re.compile(r"\b(" + "|".join(re.escape(x) for x in names) + r")\b")
    head, _, tail = expr.partition("lambda n, A: ")
    return head + "lambda n, A: " + pat.sub(lambda m: f"A[{m.group(1)!r}]", tail)


def _random_pick_with_key() -> str:
    """The torch-side random mask takes the raw seed (like the language definition)."""
    return printer.random_source()


def _header(pattern: Pattern, version: str) -> str:
    try:
        from patternc.backends.common import module_header
        return module_header(pattern, "triton")
    except ImportError:
        params = ", ".join(f"{k}={v}" for k, v in pattern.params) or "(none)"
        return (f'"""Generated by patternc {version} -- do not edit.\n\n'
                f"source:   {pattern.filename}\npattern:  {pattern.name}\nparams:   {params}\n"
                f"ir:       {pattern.expr}\nir hash:  {pattern.hash}\nbackend:  triton\n\"\"\"")


def _doc(s: str) -> str:
    s = s.replace("\\", "\\\\").replace('"""', "'''")
    return s if len(s) < 400 else s[:400] + " ..."


def _seed_key(seed: int) -> str:
    """The hash key of a random seed, folded at compile time."""
    return str((seed * HASH_SEED + 1) & 0xFFFFFFFF)


def _nest(fn: str, xs: list) -> str:
    """fn(x0, fn(x1, ...)) for Triton's two-argument minimum/maximum."""
    out = xs[-1]
    for x in reversed(xs[:-1]):
        out = f"{fn}({x}, {out})"
    return out
