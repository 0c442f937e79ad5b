"""The Triton backend: a module whose kernels have the pattern compiled into them.

For every pass of the lowering plan (patternc.lower) it writes three kernels: forward, dq
(query-major) and dk/dv (key-major, so dk/dv need no atomics and are deterministic; for
random-block and strided plans the dk/dv kernel also adds dq atomically, which measured
faster there).  Each kernel walks, per tile, the closed-form ranges of the pass's terms
(patternc.ranges), skips tiles an earlier term already visited, and runs the tile body
without any mask arithmetic when a term proves the tile full.

Signatures are printed from the runtime's parameter table (patternc.runtime.abi), which the
runtime also launches by; the host side is the runtime library, bound by one call.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from patternc import ir
from patternc import scalar as S
from patternc.frontend import Pattern
from patternc.intexpr import to_triton
from patternc.lower import Pass, Plan, Space, heavy_spans, narrow_columns, plan
from patternc.printer import ArgTable, formula, mask_expr
from patternc.ranges import (Args, TileRanges, full_span, key_major, key_position, query_major, query_position,
                             space_lengths)
from patternc.runtime.random_blocks import seed_key

from .common import (WIDTH, HostEmitter, bind_lines, head_cases, imports, module_header, random_imports,
                     uses_name)
from .common import call_lines as _call
from .schedule import atomic_dq, choose_bwd_settings, choose_forward_tiles, choose_union_walks, fused_forward, \
    longest_walks_first
from .kernel_text import T, either, fold, indent, open_mask, signature
from .triton_decode import decode_kernel, imports as decode_imports
from .triton_index import index_kernel
from .walk_text import heavy_lambda, pairs_fn, space_fields, walk_fn

# Experiments only: PATTERNC_UNION_WALK=two (or one) walks every union twice (or once) instead of
# what schedule.choose_union_walks decides per kernel.
UNION_WALK = os.environ.get("PATTERNC_UNION_WALK", "")
# Experiments only: PATTERNC_NARROW=0 walks narrow key columns (sinks, global columns) as whole
# key tiles (decisions.md: narrow-columns).
NARROW = os.environ.get("PATTERNC_NARROW", "") != "0"
BIG = "2147483647"


# Program ids -> (batch z, query head h, key/value head hk) and the slices they read: shared by
# the two query-major kernels (forward and dq).
QUERY_MAJOR_IDS = [
    "pid = tl.program_id(0)",
    "zh = tl.program_id(1)",
    "if DOCS:  # sequences along grid axis 0 (no 65,535 limit): every sequence's first tiles launch first",
    "    pid, zh = zh, pid",
    "z = zh // HC",
    "h = HEAD0 + zh % HC",
    "hk = h // GROUP",
]
QUERY_MAJOR_BASES = [
    "offs_d = tl.arange(0, BD)",
    "q_base = Q + z.to(tl.int64) * sq0 + h.to(tl.int64) * sq1",
    "k_base = K + z.to(tl.int64) * sk0 + hk.to(tl.int64) * sk1",
    "v_base = V + z.to(tl.int64) * sv0 + hk.to(tl.int64) * sv1",
]


# Under DOCS (packed documents, padded rows: runtime.varlen) the tensors each kernel rebases to its
# sequence's first row, with their row strides.
SEQ_TENSORS = {
    "fwd": (("Q", "sq2"), ("K", "sk2"), ("V", "sv2"), ("O", "so2")),
    "dq": (("Q", "sq2"), ("K", "sk2"), ("V", "sv2"), ("DO", "sdo2"), ("DQ", "sdq2"), ("O", "so2")),
    "dkdv": (("Q", "sq2"), ("K", "sk2"), ("V", "sv2"), ("DO", "sdo2"), ("DK", "sdk2"), ("DV", "sdk2"),
             ("DQ", "sdq2")),
}


def seq_prologue(table: ArgTable, tensors: tuple, per: bool) -> list:
    """Under DOCS: this program's sequence (z indexes the documents, or the padded rows), its first
    row row0 and its length n, the pattern's length-dependent arguments at that length (computed
    here, not passed), and every tensor rebased to row0; `per`: the kernel reads PER.  DOCS = 0
    compiles none of it."""
    lines = ["if DOCS:  # packed documents (1) or padded rows (2): the sequence of program row z",
             "    row0, n, z = seq_span(SEQ, SEQ_LEN, z, DOCS)  # its first row, its length, its batch row",
             "    if n == 0:  # an empty sequence (its arguments may not even exist)",
             "        return",
             ]
    if per:
        lines.append("    PER = SPER  # PER of the longest sequence")
    for e, name in table.names.items():
        lines.append(f"    {name} = as_i32({to_triton(e)})  # {e}")
    lines.append("    off = row0.to(tl.int64)")
    lines += [f"    {t} += off * {stride}" for t, stride in tensors]
    return lines


def seq_exit(space: Space, major: str, arg: Args) -> list:
    """Under DOCS the grid covers the longest sequence: programs past their own one's end return."""
    cond = "a0 >= LQ" if major == "q" else "b0 >= L"
    if space.kind == "diag":
        cond = f"({cond}) | (r >= {T(arg(space.m))})"
    return ["if DOCS:", f"    if {cond}:  # past the end of this program's sequence", "        return"]


def seq_rows(line: str, var: str, buffer: str) -> list:
    """`line`, then under DOCS the same row base in a (B, H, NROW) buffer, from the sequence's row0."""
    indent = line[:len(line) - len(line.lstrip())]
    return [line, f"{indent}if DOCS:",
            f"{indent}    {var} = {buffer}(z.to(tl.int64) * HTOT + h) * NROW + row0"]


class _Emitter:
    def __init__(self, pattern: Pattern, args: ArgTable):
        self.pattern = pattern
        # decisions.md: union-one-loop-per-walk (the forward walks a union with one tile loop where its tiles
        # are 64 rows: two loops' buffers held it to one program per SM)
        self.fwd_tiles = choose_forward_tiles(pattern)
        self.fwd_one_loop = self.fwd_tiles[0] == 64
        self.two_walks = (dict.fromkeys(("fwd", "dq", "dkdv"), UNION_WALK == "two") if UNION_WALK in ("one", "two")
                          else choose_union_walks(pattern, fwd_tiles=self.fwd_tiles))
        self.table = args
        self.arg = Args(args)
        found = ir.selects(pattern.expr)
        self.select = found[0] if found else None  # the run-time selection (select_tiles, abi.SELECTED)
        if self.select is not None:
            self.K, self.BLK, self.QBLK = (e.value for e in ir.int_args(self.select))
            self.KPAD = max(16, 1 << (self.K - 1).bit_length())

    def mask_args(self, body: str) -> str:
        """The length-dependent arguments a printed mask names, as extra parameters."""
        return "".join(f", {x}" for x in self.table.names.values() if uses_name(body, x))

    # ---- masks ---------------------------------------------------------------------------
    def mask_fn(self, name: str, expr) -> list:
        """A pass's mask; with `select`, its last argument `sel` says which pairs the run-time
        selection lists (computed by the caller for its tile: `sel_arg`)."""
        sel = ir.has_select(expr)
        body = mask_expr(expr, "i", "j", self.table, hash_fn="random_mask", select="sel" if sel else None)
        return ["@triton.jit",
                f"def {name}(i, j, n{self.mask_args(body)}{', sel' if sel else ''}):",
                f'    """{_doc(formula(expr))}"""',
                f"    return {body}", "", ""]

    def sel_arg(self, p: Pass, q: bool) -> str:
        """What a mask's `sel` argument is for one tile of pass p (query-major or not): the listed
        keys of the tile's query block, loaded once per program (query-major) or per query tile
        (key-major); per pair in residue classes, whose tiles mix query blocks."""
        if self.select is None:
            return ""
        K, BLK, QBLK = self.K, self.BLK, self.QBLK
        if p.space.kind == "diag":
            i, j = ("i[:, None]", "j[None, :]") if q else ("i[None, :]", "j[:, None]")
            return f"select_hits(sel_head, {i}, {j}, NQB, {QBLK}, {BLK}, {K})"
        if q:
            return f"select_keys(selu, j, {BLK})[None, :]"
        return f"select_keys(select_row(sel_head, a0 // {QBLK}, {K}, {self.KPAD}), j, {BLK})[:, None]"

    def mask_text(self, mask_call: str, p: Pass, q: bool) -> str:
        """The mask call for one tile of pass p."""
        i, j = ("i[:, None]", "j[None, :]") if q else ("i[None, :]", "j[:, None]")
        return mask_call.format(i=i, j=j, sel=self.sel_arg(p, q))

    def select_prologue(self, p: Pass, q: bool) -> list:
        """Where the selection of this program's head (and query tile) is: after the program ids
        (query-major) or at the top of the query-head loop (key-major)."""
        if self.select is None:
            return []
        out = ["hs = h // SELG  # the selection head this query head reads",
               f"sel_head = SEL + (z.to(tl.int64) * HS + hs) * NQB * {self.K}"]
        if q and p.space.kind != "diag":
            out.append(f"selu = select_row(sel_head, a0 // {self.QBLK}, {self.K}, {self.KPAD})  "
                       "# the key blocks this query block lists, each once")
        if not q:
            out.append(f"inv_base = INV_OFF + (z.to(tl.int64) * HS + hs) * ((n + {self.BLK - 1}) // {self.BLK})")
        return out

    # ---- loops over tiles --------------------------------------------------------------------
    def loops(self, p: Pass, major: str, mask_call: str, full_call: list, masked_call: list,
              window: bool = False, one_loop: bool = False, two_walks: bool = False,
              narrow_call: Optional[list] = None) -> list:
        """Visit every needed tile once.  Interval terms are walked as segments of full tiles
        (no mask, branch-free inner loop) and partial tiles (masked); random terms follow.
        `window`: the walk is clipped to tiles [w_lo, w_hi) (split heavy tiles).
        `one_loop`: where a walk would put two tile loops inside one enclosing loop (the union
        of several terms, a random term's full and partial tiles), it gets one loop whose mask
        is opened for full runs (`_open_mask`).  Triton gives every pipelined loop in a loop
        body its own shared buffers: two such loops double a kernel's shared memory.
        `two_walks`: a union is walked twice instead, its full runs with the mask-free body, then
        its partial tiles: one loop per walk, and walks one after the other share their buffers.
        `narrow_call` (query-major): terms that need a few fixed key columns (`narrow_columns`)
        take a step of their own of as many keys, where no other term's tiles reach them."""
        space = p.space
        q = major == "q"
        TS, idx, what = ("BN", "kt", "key") if q else ("BM", "at", "query")
        out: list = []
        spans: list = []  # (term index, TileRanges) of the interval terms
        never_full: set = set()  # terms whose tiles are never certified full: one masked loop
        randoms: list = []
        selects: list = []
        for ti, t in enumerate(p.terms):
            tr = query_major(t, space, self.arg) if q else key_major(t, space, self.arg)
            lo, hi = S.name(f"lo{ti}"), S.name(f"hi{ti}")
            out.append(f"# term {ti}: {formula(t.expr())}")
            out.append(f"lo{ti} = {T(tr.lo)}  # first {what} index that can meet this tile")
            out.append(f"hi{ti} = {T(tr.hi)}  # last {what} index")
            if tr.select is not None:
                selects.append((ti, t, tr))
                continue
            if tr.random is not None:
                randoms.append((ti, t, tr))
                continue
            out.append(f"v_lo{ti} = lo{ti} // {TS}")
            out.append(f"v_hi{ti} = tl.where({T(S.all_of([tr.applies, S.le(lo, hi)]))}, hi{ti} // {TS} + 1, "
                       f"v_lo{ti})")
            fs = full_span(t, space, self.arg, major) if p.first else None
            if fs is None:
                out.append(f"f_lo{ti} = v_lo{ti}  # never certified full: always masked")
                out.append(f"f_hi{ti} = v_lo{ti}")
                never_full.add(ti)
            else:
                for name, bound, floor in (("f_lo", fs.lo, "v_lo"), ("f_hi", fs.hi, "f_lo")):
                    line = f"{name}{ti} = tl.minimum(tl.maximum({T(bound)}, {floor}{ti}), v_hi{ti})"
                    if len(line) > WIDTH - 8:  # the bound on a line of its own
                        out += [f"{name}{ti} = {T(bound)}",
                                f"{name}{ti} = tl.minimum(tl.maximum({name}{ti}, {floor}{ti}), v_hi{ti})"]
                    else:
                        out.append(line)

                if fs.cond != S.TRUE:
                    out.append(f"f_hi{ti} = tl.where({T(fs.cond)}, f_hi{ti}, f_lo{ti})  # full only where this holds")
            spans.append((ti, tr))
        if window and spans:
            out.append("# clip every range to this program's window of tiles")
            for ti, _ in spans:
                out += [f"{a}{ti}, {b}{ti} = clip({a}{ti}, w_lo, w_hi), clip({b}{ti}, w_lo, w_hi)"
                        for a, b in (("v_lo", "v_hi"), ("f_lo", "f_hi"))]
        if q and narrow_call is not None and NARROW and len(spans) > 1 and not randoms and not selects:
            out += self._narrow_steps(p, spans, mask_call, narrow_call)
        if q:
            keep = f"keep = {self.mask_text(mask_call, p, True)} & (j < n)[None, :]"
            pos = ["b0 = kt * BN", "j = " + T(key_position(space, self.arg, S.add(S.name("b0"), S.name("tl.arange(0, BN)"))))]
        else:
            keep = f"keep = {self.mask_text(mask_call, p, False)} & (i < n)[None, :]"
            pos = ["a0 = at * BM", "i = " + T(query_position(space, self.arg, S.add(S.name("a0"), S.name("tl.arange(0, BM)"))))]
        full_body = pos + full_call
        masked_body = pos + [keep] + masked_call
        if len(spans) == 1 and spans[0][0] in never_full:
            # one masked loop: the full and leading loops would be empty (less code to compile)
            (ti, _), = spans
            out += [f"for {idx} in range(v_lo{ti}, v_hi{ti}):  # every tile masked"]
            out += indent(masked_body, 4)
        elif len(spans) == 1:
            (ti, _), = spans
            # the partial tiles on both sides of the full run share one loop: one copy of the
            # masked body fewer for Triton to compile
            out += [f"before{ti} = f_lo{ti} - v_lo{ti}  # partial tiles before the full run",
                    f"for e_it in range(0, before{ti} + (v_hi{ti} - f_hi{ti})):  # partial tiles, both sides",
                    f"    {idx} = tl.where(e_it < before{ti}, v_lo{ti} + e_it, f_hi{ti} + (e_it - before{ti}))"]
            out += indent(masked_body, 4)
            out += [f"for {idx} in range(f_lo{ti}, f_hi{ti}):  # full tiles"]
            out += indent(full_body, 4)
        elif spans:
            out += self._union_walk([ti for ti, _ in spans], never_full, idx, full_body, masked_body, keep, pos,
                                    masked_call, q, one_loop, two_walks)
        for ti, t, tr in randoms:
            prev = [(k, tr2) for k, tr2 in spans] + [(k, tr2) for k, _, tr2 in randoms if k < ti]
            body = self._tile_body(p, ti, t, tr, prev, mask_call, full_call, masked_call, query_major_loop=q,
                                   one_loop=one_loop)
            out += self._random_loop(ti, tr, body, q, window)
        for ti, t, tr in selects:
            prev = [(k, tr2) for k, tr2 in spans] + [(k, tr2) for k, _, tr2 in randoms + selects if k < ti]
            body = self._tile_body(p, ti, t, tr, prev, mask_call, full_call, masked_call, query_major_loop=q,
                                   one_loop=one_loop)
            out += self._select_loop(ti, tr, body, q, window)
        return out

    def _union_walk(self, ids: list, never_full: set, idx: str, full_body: list, masked_body: list, keep: str,
                    pos: list, masked_call: list, q: bool, one_loop: bool, two_walks: bool) -> list:
        """Walk the union of several terms' tile ranges as segments, each tile once."""
        out = ["# walk the union of the terms' tile ranges as segments, each tile once"]
        out += fold("start", "tl.minimum", [f"tl.where(v_hi{k} > v_lo{k}, v_lo{k}, {BIG})" for k in ids])
        out += fold("end", "tl.maximum", [f"tl.where(v_hi{k} > v_lo{k}, v_hi{k}, 0)" for k in ids])
        out.append("cur = start")
        inside = either("inside", [f"(v_lo{k} <= cur) & (cur < v_hi{k})" for k in ids])
        in_full = either("in_full", [f"(f_lo{k} <= cur) & (cur < f_hi{k})" for k in ids])
        seg_full = fold("seg", "tl.maximum", [f"tl.where((f_lo{k} <= cur) & (cur < f_hi{k}), f_hi{k}, cur)"
                                               for k in ids])
        vis = fold("vis", "tl.maximum", [f"tl.where((v_lo{k} <= cur) & (cur < v_hi{k}), v_hi{k}, cur)" for k in ids])
        nxt_full = fold("seg", "tl.minimum", [f"tl.where((f_lo{k} > cur) & (f_hi{k} > f_lo{k}), f_lo{k}, vis)"
                                               for k in ids])
        gap = ["else:  # jump the gap to the next range"]
        gap += indent(fold("nxt", "tl.minimum", [f"tl.where(v_lo{k} > cur, v_lo{k}, end)" for k in ids]), 4)
        gap += ["    cur = nxt"]
        if all(k in never_full for k in ids):  # no full tiles anywhere: masked segments only
            body = inside + ["if inside:"] + indent(vis, 4) + [f"    for {idx} in range(cur, vis):  # partial tiles"]
            body += indent(masked_body, 8) + ["    cur = vis"] + gap
            return out + ["while cur < end:"] + indent(body, 4)
        if two_walks:
            # two walks, one pipelined loop each: the union's full runs (no mask), then its partial
            # tiles (masked).  Sequential loops share their shared buffers, two loops inside one walk
            # do not; and full tiles skip the mask's select and registers.
            nxt_run = fold("nxt", "tl.minimum", [f"tl.where((f_lo{k} > cur) & (f_hi{k} > f_lo{k}), f_lo{k}, end)"
                                                  for k in ids])
            body = in_full + ["if in_full:"] + indent(seg_full, 4) + [f"    for {idx} in range(cur, seg):  # full tiles"]
            body += indent(full_body, 8) + ["    cur = seg", "else:  # on to the next full run"]
            body += indent(nxt_run, 4) + ["    cur = nxt"]
            out += ["while cur < end:"] + indent(body, 4)
            out.append("cur = start  # then the partial tiles")
            inner = in_full + ["if in_full:  # walked above"] + indent(seg_full, 4) + ["    cur = seg", "else:"]
            inner += indent(vis + nxt_full, 4) + [f"    for {idx} in range(cur, seg):  # partial tiles"]
            inner += indent(masked_body, 8) + ["    cur = seg"]
            body = inside + ["if inside:"] + indent(inner, 4) + gap
            return out + ["while cur < end:"] + indent(body, 4)
        if one_loop:
            inner = ["# one loop for a run of full tiles or of partial ones (one set of buffers)"]
            inner += either("full", [f"(f_lo{k} <= cur) & (cur < f_hi{k})" for k in ids])
            inner += indent(vis, 0) + fold("run_end", "tl.maximum", [
                f"tl.where((f_lo{k} <= cur) & (cur < f_hi{k}), f_hi{k}, cur)" for k in ids])
            inner += nxt_full + ["seg = tl.where(full, run_end, seg)", f"for {idx} in range(cur, seg):"]
            inner += indent(pos + open_mask(keep, q) + masked_call, 4) + ["cur = seg"]
            body = inside + ["if inside:"] + indent(inner, 4) + gap
            return out + ["while cur < end:"] + indent(body, 4)
        inner = in_full + ["if in_full:"] + indent(seg_full, 4) + [f"    for {idx} in range(cur, seg):  # full tiles"]
        inner += indent(full_body, 8) + ["else:"] + indent(vis + nxt_full, 4)
        inner += [f"    for {idx} in range(cur, seg):  # partial tiles"] + indent(masked_body, 8) + ["cur = seg"]
        body = inside + ["if inside:"] + indent(inner, 4) + gap
        return out + ["while cur < end:"] + indent(body, 4)

    def _listed_block(self, ti: int, tr: TileRanges, first: str, last: str, body: list, window: bool,
                      guard: str = "", note: str = "") -> list:
        """Query-major: the key tiles of one listed key block, keys [first, last], cut to term ti's
        key range (and the window's tiles); an empty range where the term does not apply."""
        applies = T(S.all_of([tr.applies, S.le(S.name("klo"), S.name("khi"))]))
        out = [f"klo = tl.maximum({first}, lo{ti})",
               f"khi = tl.minimum({last}, hi{ti})",
               "kt_lo = klo // BN",
               f"kt_hi = tl.where({f'({applies}) & {guard}' if guard else applies}, khi // BN + 1, kt_lo){note}"]
        if window:
            out += ["kt_lo, kt_hi = clip(kt_lo, w_lo, w_hi), clip(kt_hi, w_lo, w_hi)"]
        return out + ["for kt in range(kt_lo, kt_hi):"] + indent(body, 4)

    def _query_tiles(self, ti: int, tr: TileRanges, window: bool) -> list:
        """Key-major: the query tiles [at_lo, at_hi) of term ti's query range (and the window's)."""
        at_applies = S.all_of([tr.applies, S.le(S.name(f"lo{ti}"), S.name(f"hi{ti}"))])
        out = [f"at_lo{ti} = lo{ti} // BM",
               f"at_hi{ti} = tl.where({T(at_applies)}, hi{ti} // BM + 1, at_lo{ti})"]
        if window:
            out += [f"at_lo{ti}, at_hi{ti} = clip(at_lo{ti}, w_lo, w_hi), clip(at_hi{ti}, w_lo, w_hi)"]
        return out

    @staticmethod
    def _listing_block(ti: int, size: str, body: list) -> list:
        """Key-major: the query tiles of query block qb (blocks of `size` queries) within term ti's."""
        return [f"at_first = tl.maximum(qb * ({size} // BM), at_lo{ti})",
                f"at_last = tl.minimum((qb + 1) * ({size} // BM), at_hi{ti})",
                "for at in range(at_first, at_last):"] + indent(body, 4)

    def _random_loop(self, ti: int, tr: TileRanges, body: list, q: bool, window: bool) -> list:
        rb, rr = T(self.arg(tr.random.b)), T(self.arg(tr.random.r))
        key = seed_key(tr.random.seed)
        if q:
            return [f"qb{ti} = a0 // {rb}  # BM divides the random block: one query block per tile",
                    f"nkb{ti} = (n + {rb} - 1) // {rb}",
                    f"picks{ti} = tl.minimum({rr}, nkb{ti})",
                    f"for t in range(0, picks{ti}):",
                    f"    kb = random_block(qb{ti}, t, nkb{ti}, picks{ti}, {key})"] + indent(
                self._listed_block(ti, tr, f"kb * {rb}", f"kb * {rb} + {rb} - 1", body, window), 4)
        return self._query_tiles(ti, tr, window) + [
            f"nkb{ti} = (n + {rb} - 1) // {rb}",
            f"picks{ti} = tl.minimum({rr}, nkb{ti})",
            f"kb{ti} = b0 // {rb}  # BN divides the random block: one key block per tile",
            "# which query blocks picked this key block?  Ask 128 query blocks at once, then",
            "# visit the few that did (about `picks`), instead of asking every query tile in turn",
            f"qb_lo{ti} = (at_lo{ti} * BM) // {rb}",
            f"qb_hi{ti} = (at_hi{ti} * BM + {rb} - 1) // {rb}",
            f"for qs in range(qb_lo{ti}, qb_hi{ti}, 128):",
            "    cand = qs + tl.arange(0, 128)",
            f"    hit = random_picked(cand, kb{ti}, nkb{ti}, picks{ti}, {key}) & (cand < qb_hi{ti})",
            "    while tl.max(hit.to(tl.int32), 0) > 0:",
            f"        qb = tl.min(tl.where(hit, cand, {BIG}), 0)",
            "        hit = hit & (cand != qb)"] + indent(self._listing_block(ti, rb, body), 8)

    def _select_loop(self, ti: int, tr: TileRanges, body: list, q: bool, window: bool) -> list:
        """The selected term's tiles: query-major, the blocks this query block lists (each once, -1
        skipped), cut to the term's key range; key-major, the query blocks that listed this key
        block, from the Selection's key-major inverse (no atomics: this program owns its keys)."""
        K, BLK, QBLK, KPAD = self.K, self.BLK, self.QBLK, self.KPAD
        if q:
            return [f"for s_it in range(0, {K}):  # term {ti}'s selected key blocks",
                    f"    kb = tl.sum(tl.where(tl.arange(0, {KPAD}) == s_it, selu, 0), 0)"] + indent(
                self._listed_block(ti, tr, f"kb * {BLK}", f"kb * {BLK} + {BLK - 1}", body, window,
                                   guard="(kb >= 0)", note="  # -1: an empty slot"), 4)
        return self._query_tiles(ti, tr, window) + [
            f"kb{ti} = b0 // {BLK}  # BN divides the block: one key block per tile",
            "# the query blocks that listed this key block, in order (Selection.inverse)",
            f"for o_it in range(tl.load(inv_base + kb{ti}), tl.load(inv_base + kb{ti} + 1)):",
            "    qb = tl.load(INV_QB + o_it)"] + indent(self._listing_block(ti, str(QBLK), body), 4)

    def _narrow_steps(self, p: Pass, spans: list, mask_call: str, call: list) -> list:
        """One NB-key step (pointer loads) for each term that needs at most NB fixed key columns,
        before the walk, when no other term's key tiles reach those columns (so each allowed
        pair is counted once; the union mask applies, cut to the term's columns); the walk then
        skips the term.  Otherwise (early query tiles, whose window reaches the columns) the
        term stays in the walk."""
        out = []
        for ti, _ in spans:
            nb = narrow_columns(p.terms[ti], p.space)
            if nb is None:
                continue
            others = [k for k, _ in spans if k != ti]
            apart = [f"narrow{ti} = v_hi{ti} > v_lo{ti}"]
            apart += [f"narrow{ti} = narrow{ti} & ((v_hi{k} <= v_lo{k}) | (v_lo{k} > hi{ti} // BN) | "
                      f"(v_hi{k} <= lo{ti} // BN))" for k in others]
            mask = self.mask_text(mask_call, p, True)
            out += [f"if {nb} < BN:  # term {ti} needs at most {nb} fixed key columns: a step of its own"]
            out += indent(apart, 4)
            out += [f"    if narrow{ti}:",
                    f"        b0 = lo{ti}",
                    f"        j = b0 + tl.arange(0, {nb})",
                    f"        keep = {mask} & ((j <= hi{ti}) & (j < n))[None, :]"]
            out += indent(call, 8)
            out += [f"    v_hi{ti} = tl.where(narrow{ti}, v_lo{ti}, v_hi{ti})  # walked above",
                    f"    f_hi{ti} = tl.where(narrow{ti}, f_lo{ti}, f_hi{ti})"]
        return out

    def _tile_body(self, p: Pass, ti: int, t, tr: TileRanges, prev: list, mask_call: str, full_call: list,
                   masked_call: list, query_major_loop: bool, one_loop: bool = False) -> list:
        space = p.space
        if query_major_loop:
            lines, idx = ["b0 = kt * BN", "b1 = b0 + BN - 1"], "kt"
        else:
            lines, idx = ["a0 = at * BM", "a1 = a0 + BM - 1"], "at"
        seen = []
        x0, x1 = ("b0", "b1") if query_major_loop else ("a0", "a1")
        for si, sr in prev:
            if sr.select is not None:  # the same selection lists this tile's block: term si visited
                # it iff it applies here and the tile meets si's index range
                seen.append(T(S.all_of([sr.applies, S.le(S.name(f"lo{si}"), S.name(x1)),
                                        S.le(S.name(x0), S.name(f"hi{si}"))])))
            elif sr.random is None:
                seen.append(f"(({idx} >= v_lo{si}) & ({idx} < v_hi{si}))")
            else:
                rb = T(self.arg(sr.random.b))
                nk = f"(n + {rb} - 1) // {rb}"
                picks = f"tl.minimum({T(self.arg(sr.random.r))}, {nk})"
                # term si visited this tile iff it applies here, picked its block, and the tile
                # meets si's index range [lo, hi] (which need not start on a tile boundary)
                cond = S.all_of([sr.applies, S.le(S.name(f"lo{si}"), S.name(x1)), S.le(S.name(x0), S.name(f"hi{si}"))])
                picked = S.name(f"random_picked(a0 // {rb}, b0 // {rb}, {nk}, {picks}, {seed_key(sr.random.seed)})")
                seen.append(T(S.all_of([picked, cond])))
        fulls = []
        if p.first:
            for other in p.terms:
                if other.picked:
                    continue
                f = query_major(other, space, self.arg).full
                if f != S.FALSE:
                    fulls.append(f)
            own = query_major(t, space, self.arg).full  # inside its own loop a random tile is a picked tile
            if (tr.random is not None or tr.select is not None) and own != S.FALSE:
                fulls.append(own)
        if query_major_loop:
            pos = "j = " + T(key_position(space, self.arg, S.add(S.name("b0"), S.name("tl.arange(0, BN)"))))
            keep = f"keep = {self.mask_text(mask_call, p, True)} & (j < n)[None, :]"
        else:
            pos = "i = " + T(query_position(space, self.arg, S.add(S.name("a0"), S.name("tl.arange(0, BM)"))))
            keep = f"keep = {self.mask_text(mask_call, p, False)} & (i < n)[None, :]"
        work: list = [pos]
        if fulls:
            cond = S.all_of([S.lt(S.name("a1"), S.name("LQ")), S.lt(S.name("b1"), S.name("L")), S.any_of(fulls)])
            work.append(f"full = {T(cond)}")
            if one_loop:  # one tile call: its loads are not duplicated in two branches
                work += open_mask(keep, query_major_loop) + masked_call
            else:
                work += ["if full:  # every pair allowed: no mask arithmetic"] + indent(full_call, 4)
                work += ["else:", f"    {keep}"] + indent(masked_call, 4)
        else:
            work += [keep] + masked_call
        if seen:
            lines += either("seen", seen) + ["if seen == 0:  # no earlier term visited this tile"]
            lines += indent(work, 4)
        else:
            lines += work
        return lines

    # ---- kernels ---------------------------------------------------------------------------
    def space_prologue(self, space: Space, major: str, rev: bool = False) -> list:
        """Map the program id to a tile of the pass's index space; `rev`: the walks grow with the
        tile's index, and REV (a launch setting) runs the tiles last-first."""
        tile = "BM" if major == "q" else "BN"
        if space.kind == "diag":
            m = T(self.arg(space.m))
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
                      "i = " + T(query_position(space, self.arg, S.add(S.name("a0"), S.name("tl.arange(0, BM)")))),
                      "row_ok = (a0 + tl.arange(0, BM)) < LQ"]
        else:
            lines += [f"b0 = t_idx * {tile}", "b1 = b0 + BN - 1",
                      "j = " + T(key_position(space, self.arg, S.add(S.name("b0"), S.name("tl.arange(0, BN)")))),
                      "col_ok = (b0 + tl.arange(0, BN)) < L"]
        return lines

    def space_lengths(self, space: Space) -> list:
        """LQ and L: how many query and key positions the space has (in its own order)."""
        lq, lk = space_lengths(space, self.arg)
        if space.kind == "diag":
            return [f"LQ = {T(lq)}  # length of this residue class", "L = LQ"]
        if space.kind == "keys":
            return ["LQ = n", f"L = {T(lk)}  # number of kept key columns"]
        return ["LQ = n", "L = n"]

    @staticmethod
    def key_tma(p: Pass) -> bool:
        """Whether a query-major kernel's key tiles may load through TMA descriptors: where their
        positions are contiguous (tokens in order) or a residue class (one box of a
        (B, H, n/m, m, D) view when m divides n; the host then passes TMA=2).  Kept key columns
        load through pointers, and their kernels carry no descriptor branch."""
        return p.space.kind in ("identity", "diag")

    @staticmethod
    def row_tma(p: Pass) -> bool:
        """A query-major kernel's own tile (Q, dO) through TMA: where its query positions are
        contiguous (not residue classes) and the host passed descriptors (QTMA)."""
        return p.space.kind != "diag"

    def split_lines(self, p: Pass, major: str) -> tuple:
        """(lines after the program ids, window lines): only for passes with global rows/columns.

        A global row's tile walks every key tile.  Its walk is cut into chunks of CH tiles: the
        normal launch does chunk 0, a PARTIAL launch (grid axis 2 = chunk - 1) the others, into
        scratch rows that the host merges.  Every other tile's window is unbounded."""
        if not heavy_spans(p, major):
            return [], []
        # Heavy tiles form up to two ranges [SPLIT0, SPLIT1) and [SPLIT2, SPLIT3); a split
        # launch's program r walks the r-th heavy tile.
        ids = ["r_idx = pid  # in a split launch: the rank of this program's heavy tile",
               "first = SPLIT1 - SPLIT0",
               "heavy_pid = tl.where(pid < first, SPLIT0 + pid, SPLIT2 + pid - first)",
               "pid = tl.where(PARTIAL != 0, heavy_pid, pid)"]
        win = ["c_idx = tl.program_id(2) + PARTIAL  # chunk: 0 in the normal launch",
               "heavy = ((t_idx >= SPLIT0) & (t_idx < SPLIT1)) | ((t_idx >= SPLIT2) & (t_idx < SPLIT3))",
               "w_lo = tl.where(heavy, c_idx * CH, 0)",
               f"w_hi = tl.where(heavy, c_idx * CH + CH, {BIG})"]
        return ids, win

    @staticmethod
    def out_rows(p: Pass, major: str, pos: str, tile: str) -> list:
        """Rows of the output a program writes: a split launch writes chunk-major scratch rows."""
        if not heavy_spans(p, major):
            return [f"{pos}_out = {pos}"]
        return ["# a split launch writes scratch rows: chunk-major, heavy tiles by rank",
                f"{pos}_out = {pos} + PARTIAL * ((c_idx - 1) * RS + (r_idx - t_idx) * {tile})"]

    def mask_call(self, name: str, body_args: str, selected: bool = False) -> str:
        return f"{name}({{i}}, {{j}}, n{body_args}" + (", {sel})" if selected else ")")

    def fwd_kernel(self, name: str, mask: tuple, p: Pass, more: tuple = (), rev: bool = False,
                   seeded: bool = False) -> list:
        """The forward kernel of pass `p`; `more`: (mask, pass) of later passes that walk the same
        query tiles (fusable), continued in the same program after p's walk (one online softmax,
        no float32 state between launches, Q loaded once); `rev`: see space_prologue; `seeded`:
        a later pass, which continues the earlier passes' softmax state."""
        loops = self.fwd_loops(mask, p)
        for m2, mp in more:
            loops += [f"# ---- pass {mp.space.describe()}: same query tile, same running softmax"]
            loops += self.space_lengths(mp.space)
            loops += self.fwd_loops(m2, mp)
        ids, win = self.split_lines(p, "q")
        spaces = " then ".join(x.space.describe() for x in (p,) + tuple(mp for _, mp in more))
        sel = self.select is not None
        mass = sel and p.space.kind != "diag"
        head = signature(name, "fwd", bool(heavy_spans(p, "q")), tuple(self.table.names.values()), seeded, rev,
                         sel)
        head += [f'    """Forward, {spaces}.'] + ([
            "    SEEDED: continue from the earlier passes' float32 state in OI (laid out like O;",
            '    O may be OI, or the final output in the input dtype).'] if seeded else []) + ([
            "    MASS: also the probability each listed key block receives, summed over this tile's rows,",
            "    into MASSO (accumulated in the online softmax like the output)."] if mass else []) + ['    """']
        tensors = SEQ_TENSORS["fwd"] + ((("OI", "so2"),) if seeded else ())
        body = QUERY_MAJOR_IDS + ids + seq_prologue(self.table, tensors, p.space.kind == "diag" or rev) \
            + self.space_prologue(p.space, "q", rev) \
            + seq_exit(p.space, "q", self.arg) + win + QUERY_MAJOR_BASES + [
            "o_base = O + z.to(tl.int64) * so0 + h.to(tl.int64) * so1",
        ] + seq_rows("lse_base = LSE + (z.to(tl.int64) * HTOT + h) * NOUT", "lse_base", "LSE + ") + [
            f"q = tile_rows(QD, z, h, a0, r, q_base, i, row_ok, sq2, sq3, offs_d, D, WIDEN, {self.qtma(p)})",
        ] + self.select_prologue(p, True)
        fresh = ["m_i = tl.full([BM], float('-inf'), dtype=tl.float32)",
                 "l_i = tl.zeros([BM], dtype=tl.float32)",
                 "acc = tl.zeros([BM, BD], dtype=tl.float32)"]
        if seeded:
            body += ["if SEEDED:  # continue the online softmax of the earlier passes (m = lse, l = 1, acc = out)",
                     "    lse_prev = tl.load(lse_base + i, mask=row_ok, other=float('-inf'))",
                     "    m_i = lse_prev * 1.4426950408889634",
                     "    l_i = tl.where(lse_prev == float('-inf'), 0.0, 1.0)",
                     "    oi_base = OI + z.to(tl.int64) * so0 + h.to(tl.int64) * so1",
                     "    acc = load_rows(oi_base, i, row_ok, so2, so3, offs_d, D, False)",
                     "else:"] + indent(fresh, 4)
        else:
            body += fresh
        if mass:
            body.append(f"macc = tl.zeros([BM, {self.KPAD}], dtype=tl.float32)  # block mass per row and slot")
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
        if mass:
            tail += [
                "if MASS:  # this tile's rows' probability per listed block (the host sums a query block's tiles)",
                "    mrow = tl.where(row_ok[:, None], macc / l_safe[:, None], 0.0)",
                f"    m_base = MASSO + ((z.to(tl.int64) * HTOT + h) * (NQB * ({self.QBLK} // BM)) + t_idx) * {self.K}",
                f"    slot = tl.arange(0, {self.KPAD})",
                f"    tl.store(m_base + slot, tl.sum(mrow, 0), mask=slot < {self.K})",
            ]
        return head + indent(body + loops + tail, 4) + ["", ""]

    def qtma(self, p: Pass) -> str:
        return "QTMA" if self.row_tma(p) else "False"

    def ktma(self, p: Pass) -> str:
        return "TMA" if self.key_tma(p) else "False"

    def fwd_loops(self, mask: tuple, p: Pass) -> list:
        args = ["acc", "m_i", "l_i", "q", "KD", "VD", "z", "hk", "b0", "r", "k_base", "v_base", "sk2", "sk3", "sv2",
                "sv3", "j", "{keep}", "n", "qk_scale", "offs_d", "D", "{masked}", "PREC", "WIDEN", "{tma}"]
        fn, out = "fwd_tile", "acc, m_i, l_i = "
        if self.select is not None and p.space.kind != "diag":  # with the block mass (MASS)
            args = args[:3] + ["macc"] + args[3:21] + ["selu", str(self.BLK)] + args[21:] + ["MASS"]
            fn, out = "fwd_tile_sel", "acc, m_i, l_i, macc = "

        def call(keep, masked, tma):
            return _call(fn, [a.format(keep=keep, masked=masked, tma=tma) for a in args], out)
        return self.loops(p, "q", mask, call("0", "False", self.ktma(p)), call("keep", "True", self.ktma(p)),
                          bool(heavy_spans(p, "q")), self.fwd_one_loop, self.two_walks["fwd"],
                          narrow_call=call("keep", "True", "False"))

    def dq_kernel(self, name: str, mask: str, p: Pass, rev: bool = False) -> list:
        args = ["dq", "q", "do", "lse2", "delta", "KD", "VD", "z", "hk", "b0", "r", "k_base", "v_base", "sk2", "sk3",
                "sv2", "sv3", "j", "{keep}", "n", "qk_scale", "offs_d", "D", "{masked}", "PREC", "WIDEN", "{tma}"]

        def call(keep, masked, tma):
            return _call("dq_tile", [a.format(keep=keep, masked=masked, tma=tma) for a in args], "dq = ")
        loops = self.loops(p, "q", mask, call("0", "False", self.ktma(p)), call("keep", "True", self.ktma(p)),
                           bool(heavy_spans(p, "q")), True, self.two_walks["dq"],
                           narrow_call=call("keep", "True", "False"))
        ids, win = self.split_lines(p, "q")
        head = signature(name, "dq", bool(heavy_spans(p, "q")), tuple(self.table.names.values()), rev=rev,
                         select=self.select is not None) + [
            f'    """dq, {p.space.describe()}.  ACCUM: add to DQ (float32) so passes combine without atomics.',
            "    PRO (the first pass's normal launch): first compute and store each row's delta = sum(O * dO)",
            '    and log-sum-exp in log2 units, which the later launches read (no prologue kernel)."""',
        ]
        body = QUERY_MAJOR_IDS + ids + seq_prologue(self.table, SEQ_TENSORS["dq"], p.space.kind == "diag" or rev) \
            + self.space_prologue(p.space, "q", rev) + seq_exit(p.space, "q", self.arg) + win + QUERY_MAJOR_BASES + [
            "do_base = DO + z.to(tl.int64) * sdo0 + h.to(tl.int64) * sdo1",
            "dq_base = DQ + z.to(tl.int64) * sdq0 + h.to(tl.int64) * sdq1",
        ] + seq_rows("row_base = (z.to(tl.int64) * HTOT + h) * n", "row_base", "") + [
            f"q = tile_rows(QD, z, h, a0, r, q_base, i, row_ok, sq2, sq3, offs_d, D, WIDEN, {self.qtma(p)})",
            f"do = tile_rows(DOD, z, h, a0, r, do_base, i, row_ok, sdo2, sdo3, offs_d, D, WIDEN, {self.qtma(p)})",
            "if PRO != 0:",
            "    o_base = O + z.to(tl.int64) * so0 + h.to(tl.int64) * so1",
            "    o_rows = load_rows(o_base, i, row_ok, so2, so3, offs_d, D, False)",
            "    delta = tl.where(row_ok, tl.sum(o_rows.to(tl.float32) * do.to(tl.float32), 1), 0.0)",
            "    lse_e = tl.load(LSE + row_base + i, mask=row_ok, other=0.0)",
            "    lse2 = tl.where(row_ok & (lse_e != float('-inf')), lse_e * 1.4426950408889634, float('inf'))",
            "    tl.store(DELTA + row_base + i, delta, mask=row_ok)",
            "    tl.store(LSE2 + row_base + i, lse2, mask=row_ok)",
            "else:",
            "    lse2 = tl.load(LSE2 + row_base + i, mask=row_ok, other=float('inf'))",
            "    delta = tl.load(DELTA + row_base + i, mask=row_ok, other=0.0)",
            "dq = tl.zeros([BM, BD], dtype=tl.float32)",
        ] + self.select_prologue(p, True)
        tail = self.out_rows(p, "q", "i", "BM") + [
            "dq_ptrs = dq_base + i_out.to(tl.int64)[:, None] * sdq2 + offs_d[None, :] * sdq3",
            "io_mask = row_ok[:, None] & (offs_d[None, :] < D)",
            "dq = dq * sm_scale",
            "if ACCUM:  # a later pass or head group adds to what earlier launches wrote (float32)",
            "    dq += tl.load(dq_ptrs, mask=io_mask, other=0.0)",
            "tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=io_mask)",
        ]
        return head + indent(body + loops + tail, 4) + ["", ""]

    def dkdv_kernel(self, name: str, mask: str, p: Pass) -> list:
        args = ["dk", "dv", "k", "v", "QD", "DOD", "z", "h", "a0", "r", "q_base", "do_base", "sq2", "sq3", "sdo2",
                "sdo3", "lse_base", "delta_base", "dq_base", "sdq2", "sdq3", "DQD", "sm_scale", "i", "{keep}", "n",
                "qk_scale", "offs_d", "D", "{masked}", "PREC", "WIDEN", "TMA", "FUSED",
                "RED_TMA" if self.row_tma(p) else "False"]

        def call(keep, masked):
            return _call("dkdv_tile", [a.format(keep=keep, masked=masked) for a in args], "dk, dv = ")
        loops = self.loops(p, "k", mask, call("0", "False"), call("keep", "True"), bool(heavy_spans(p, "k")), True,
                           self.two_walks["dkdv"])
        ids, win = self.split_lines(p, "k")
        head = signature(name, "dkdv", bool(heavy_spans(p, "k")), tuple(self.table.names.values()),
                         select=self.select is not None) + [
            f'    """dk and dv, {p.space.describe()}: one key tile, every query head of its group.',
            '    FUSED: dq too, added atomically into DQ (float32), and no dq kernel runs."""',
        ]
        ids = ["pid = tl.program_id(0)", "zk = tl.program_id(1)",
               "if DOCS:  # sequences along grid axis 0 (no 65,535 limit): every sequence's first tiles launch first",
               "    pid, zk = zk, pid",
               "z = zk // KC", "hk = KV0 + zk % KC"] + ids
        body = ids + seq_prologue(self.table, SEQ_TENSORS["dkdv"], p.space.kind == "diag") \
            + self.space_prologue(p.space, "k") \
            + seq_exit(p.space, "k", self.arg) + win + [
            "offs_d = tl.arange(0, BD)",
            "k_base = K + z.to(tl.int64) * sk0 + hk.to(tl.int64) * sk1",
            "v_base = V + z.to(tl.int64) * sv0 + hk.to(tl.int64) * sv1",
            "k = load_rows(k_base, j, col_ok, sk2, sk3, offs_d, D, WIDEN)",
            "v = load_rows(v_base, j, col_ok, sv2, sv3, offs_d, D, WIDEN)",
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
            "    if DOCS:  # rows of the (B, H, NROW) buffers",
            "        lse_base = LSE2 + (z.to(tl.int64) * HTOT + h) * NROW + row0",
            "        delta_base = DELTA + (z.to(tl.int64) * HTOT + h) * NROW + row0",
            "    dq_base = DQ + z.to(tl.int64) * sdq0 + h.to(tl.int64) * sdq1",
        ] + indent(self.select_prologue(p, False), 4)
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
        return head + indent(body, 4) + indent(loops, 8) + indent(tail, 4) + ["", ""]


def _doc(s: str) -> str:
    s = s.replace("\\", "\\\\").replace('"""', "'''")
    return s if len(s) < 400 else s[:400] + " ..."


DESCRIPTION = """\
Sparse attention with this pattern compiled into Triton kernels (forward and backward).

    attention(q, k, v, scale=None, return_lse=False)   q: (B, Hq, n, D); k, v: (B, Hkv, n, D)
    attention(q, k, v, cu_seqlens=..., max_seqlen=...)  packed documents (B = 1), each its own sequence
    attention(q, k, v, seq_lens=..., seq_starts=...)    padded rows (padding gives 0)
    decode(q, k_cache, v_cache, cache_seqlens, *, scale=None, page_table=None, return_lse=False)
                                                       the t newest rows against a KV cache
    KVCache(batch_size, kv_heads, head_dim, *, dtype, device, max_len=None, page_size=None)
                                                       a cache that keeps only the keys still read
    mask(n, device=None)                               the dense boolean mask
    mask_rows(i, j, n, H=1)                            the mask at query rows i, key columns j
    cp_positions(n, world_size, rank, layout="contiguous")       a rank's token positions
    context_parallel_attention(q, k, v, *, group=None, layout="contiguous", n=None)

On CUDA (and on the CPU under TRITON_INTERPRET=1) the kernels run; elsewhere, and for inputs
the kernels do not take (float64, D > 256), an exact sparse PyTorch path that visits only the
keys the pattern allows.  The host side is patternc's runtime library (patternc.runtime);
`patternc compile --standalone` writes a module with the runtime included.
"""
TILE_BODIES = ("clip", "dkdv_tile", "dq_tile", "fwd_tile", "load_rows", "tile_rows")
SEQ_BODIES = ("as_i32", "floor_div", "floor_mod", "int_sqrt", "seq_span")
SELECT_TILES = ("fwd_tile_sel", "select_hits", "select_keys", "select_row")


def _parts(pattern: Pattern, host: HostEmitter, e: _Emitter) -> tuple:
    """(kernels, walk functions, Case rows, random block, atomic dq) of the module."""
    arg = e.arg
    longest = longest_walks_first(pattern, tiles=e.fwd_tiles)
    cases = head_cases(pattern)
    kernels: list = []
    walks: list = []
    case_rows = []
    random_block = None
    fused_dq = False
    for ci, (h0, h1, expr) in enumerate(cases):
        pl: Plan = plan(expr)
        fused_dq |= atomic_dq(pl)  # decisions.md: atomic-dq
        if pl.random_block is not None:
            random_block = pl.random_block if random_block is None else math.gcd(random_block, pl.random_block)
        if not pl.passes:
            kernels.append(f"# heads {h0}..{h1 if h1 is not None else 'H-1'}: the pattern is empty; "
                           "every row gives 0 and lse = -inf\n")
        fuse = fused_forward(pl)
        # query tiles last-first where their walks grow (not for split global rows, whose launches
        # map program ids to heavy tiles)
        grow, grow_fused = longest[ci] if longest and len(longest[ci][0]) == len(pl.passes) \
            else ([False] * len(pl.passes), False)
        grow = [g and not heavy_spans(p, "q") for g, p in zip(grow, pl.passes)]
        grow_fused = grow_fused and not any(heavy_spans(p, "q") for p in pl.passes)
        tags = [f"c{ci}_p{pi}" if len(cases) > 1 else f"p{pi}" for pi in range(len(pl.passes))]
        masks = []
        for pi, p in enumerate(pl.passes):
            body = mask_expr(p.mask, "i", "j", host.table, hash_fn="random_mask", select="sel")
            masks.append(e.mask_call(f"_mask_{tags[pi]}", e.mask_args(body), ir.has_select(p.mask)))
        passes = []
        for pi, p in enumerate(pl.passes):
            tag = tags[pi]
            kernels.append(f"# ---- pass {pi}" + (f" (heads {h0}..{h1})" if h1 is not None else "")
                           + f": {p.space.describe()}\n# pairs: {_doc(formula(p.mask))}\n")
            kernels.append("\n".join(e.mask_fn(f"_mask_{tag}", p.mask)))
            if pi == 0 and fuse:  # one forward kernel walks every pass's tiles
                more = tuple(zip(masks[1:], pl.passes[1:]))
                kernels.append("\n".join(e.fwd_kernel(f"_fwd_{tag}", masks[0], p, more, grow_fused)))
            elif not fuse:
                kernels.append("\n".join(e.fwd_kernel(f"_fwd_{tag}", masks[pi], p, rev=grow[pi], seeded=pi > 0)))
            kernels.append("\n".join(e.dq_kernel(f"_dq_{tag}", masks[pi], p, grow[pi])))
            kernels.append("\n".join(e.dkdv_kernel(f"_dkdv_{tag}", masks[pi], p)))
            if e.select is None:  # decoding takes no run-time selection (runtime.module refuses it)
                kernels.append("\n".join(decode_kernel(signature(f"_dec_{tag}", "decode", False, ()), masks[pi], p,
                                                        arg)))
            walks.append("\n".join(walk_fn(f"_walk_{tag}", p, host, arg)))
            walks.append("\n".join(pairs_fn(f"_pairs_{tag}", p, host)))
            fields = [f'"{p.space.kind}"{space_fields(p, host)}', f"walk=_walk_{tag}", f"mask=_pairs_{tag}"]
            fields.append(f"fwd=_fwd_{tag}" if pi == 0 or not fuse else "fwd=None")
            fields += [f"dq=_dq_{tag}", f"dkdv=_dkdv_{tag}"] + ([f"decode=_dec_{tag}"] if e.select is None else [])
            if heavy_spans(p, "q"):
                fields.append(f"heavy_q={heavy_lambda(heavy_spans(p, 'q'))}")
            if heavy_spans(p, "k"):
                fields.append(f"heavy_k={heavy_lambda(heavy_spans(p, 'k'))}")
            if grow_fused if fuse else grow[pi]:
                fields.append("rev_fwd=True")
            if grow[pi]:
                fields.append("rev_dq=True")
            # which kernels load through TMA descriptors (the host builds them only for those)
            tma_fwd = any(e.key_tma(x) for x in pl.passes) if fuse and pi == 0 else e.key_tma(p)
            if not tma_fwd:
                fields.append("tma_fwd=False")
            if not e.key_tma(p):
                fields.append("tma_dq=False")
            if not e.row_tma(p):
                fields.append("tma_rows=False")
            passes.append(_call("Pass", fields, " " * 12))
        last = "None" if h1 is None else str(h1)
        case_rows.append(f"        Case({h0}, {last}, (\n" + "\n".join("\n".join(x) + "," for x in passes) + "\n        )),")
    return kernels, walks, case_rows, random_block, fused_dq


def emit(pattern: Pattern) -> str:
    """The module's source text (deterministic for a given pattern)."""
    host = HostEmitter(pattern)
    e = _Emitter(pattern, host.table)
    _parts(pattern, host, e)  # names every length-dependent argument first: each signature lists them all
    host.candidates()  # (and those of the indexer's candidate rule)
    host.mask_head()  # (and those of the whole pattern's host mask: the launches pass every one)
    kernels, walks, case_rows, random_block, fused_dq = _parts(pattern, host, e)
    host_text = host.functions(walks)
    kernel_text = "\n".join(kernels)
    bwd = {d: {k: v for k, v in choose_bwd_settings(pattern, D=d).items() if v is not None} for d in (64, 128)}
    schedule = (f"Schedule(fwd_tiles={e.fwd_tiles!r}, fused_dq={fused_dq!r}"
                + (f", random_block={random_block!r}" if random_block is not None else "")
                + (f", select_blocks={(e.BLK, e.QBLK)!r}" if e.select is not None else "")
                + ",\n                      bwd_tiles={" + ",\n                                 ".join(
                    f"{d}: dict({', '.join(f'{k}={v}' for k, v in cfg.items())})" for d, cfg in bwd.items()) + "})")
    more = ()
    if e.select is not None:  # select_blocks on the GPU
        kernel_text += "\n\n" + "\n".join(index_kernel(e.pattern, e.arg, e.table))
        more = ("select_index=_select_index",)
    spec = host.spec("triton", "(\n" + "\n".join(case_rows) + "\n    )", schedule, more)
    runtime_names = ["Case", "Pass", "Schedule", "Spec", "bind"]
    parts = [module_header(pattern, "triton", DESCRIPTION),
             imports(pattern, host_text, runtime_names, kernels=True)]
    rnd = random_imports(kernel_text + host_text)
    if rnd:
        parts[-1] += "\n" + rnd
    used = [x for x in TILE_BODIES if uses_name(kernel_text, x)]
    if used:
        parts[-1] += f"\nfrom patternc.runtime.tile_bodies import {', '.join(used)}"
    if decode_imports(kernel_text):
        parts[-1] += "\n" + decode_imports(kernel_text)
    seq = [x for x in SEQ_BODIES if uses_name(kernel_text, x)]
    if seq:
        parts[-1] += f"\nfrom patternc.runtime.seq_bodies import {', '.join(seq)}"
    used = [x for x in SELECT_TILES if uses_name(kernel_text, x)]
    if used:
        parts[-1] += f"\nfrom patternc.runtime.select_tiles import {', '.join(used)}"
    parts += [host.constants(), host_text,
              "# The pattern, compiled: a forward, a dq, a dk/dv and a decode kernel per pass.",
              kernel_text.rstrip(),
              "# Bound to the runtime library (patternc.runtime): launches, autograd, the PyTorch path.\n" + spec,
              bind_lines("triton", selected=host.selected)]
    return "\n\n\n".join(parts).rstrip() + "\n"
