"""The Triton backend's decode kernels: the newest rows against a KV cache, one kernel per pass.

A decode step's query rows are few (t new tokens of the GROUP query heads that share a kv
head), so one program holds all of them, GROUP x t rows in one tile (heads packed into the
tile's rows), and walks the keys they need: the same closed-form tile ranges as the forward
kernels (patternc.ranges.query_major), with the tile's query range a0 = n - t, a1 = n - 1 in
token order, or, in a residue-class pass, the new rows of one class.  Split-K: the walk's key
tiles are dealt out to SPLITS programs by rank (the terms' ranges one after another), random
blocks by pick, and a combine kernel merges the splits' and passes' softmax states
(runtime.decode_bodies.decode_combine).

Nothing comes from the host but shapes: n is read from cache_seqlens on the device, and the
pattern's length-dependent arguments are computed from it (patternc.intexpr.to_triton), so a
decode step can be captured in a CUDA graph.  Every tile is masked (the pass's mask, the rows'
heads, j < n): decoding is memory-bound, and the mask costs less than a second loop.
"""
from __future__ import annotations

from patternc import scalar as S
from patternc.intexpr import to_triton
from patternc.lower import Pass
from patternc.printer import formula
from patternc.ranges import Args, key_position, query_major, space_lengths
from patternc.runtime.random_blocks import seed_key

from .common import uses_name

INT_HELPERS = ("floordiv", "floormod", "isqrt")


def T(e) -> str:
    return S.triton(e)


def _indent(lines: list, k: int) -> list:
    return [(" " * k + x) if x else x for x in lines]


def _prologue(p: Pass) -> list:
    """The program's rows: (batch z, kv head hk, split sid), its query tile [a0, a1] in the pass's
    space (class r), and per row its head h, position i and row of q (qrow)."""
    lines = ["sid = tl.program_id(0)  # which split of the keys",
             "zk = tl.program_id(1)",
             "z = zk // KC",
             "hk = KV0 + zk % KC",
             "rg = tl.program_id(2)  # row group: " + ("residue class x heads" if p.space.kind == "diag" else "heads"),
             "n = tl.load(SEQ + z).to(tl.int32)  # this row's length, new tokens included"]
    return lines


def imports(kernel_text: str) -> str:
    """The import of the runtime's decode functions that the kernels use."""
    used = [x for x in ("decode_tile",) + INT_HELPERS if uses_name(kernel_text, x)]
    return f"from patternc.runtime.decode_bodies import {', '.join(used)}" if used else ""


def _rows(p: Pass, arg: Args) -> list:
    if p.space.kind == "diag":
        m = T(arg(p.space.m))
        lines = ["cls = rg // NHG  # the class of new row cls: rows cls, cls + m, ... of q",
                 "hg = rg % NHG",
                 "base = n - T + cls  # position of the class's first new row",
                 f"m = {m}",
                 "r = floormod(base, m)  # residue class: positions r, r + m, r + 2*m, ...",
                 "a0 = floordiv(base, m)",
                 "TR = tl.maximum((T - cls + m - 1) // m, 1)  # new rows in this class (cls < m)",
                 "a1 = a0 + TR - 1",
                 "rho = tl.arange(0, BM)",
                 "qrow = cls + m * (rho % TR)",
                 "i = base + m * (rho % TR)",
                 "row_ok = (cls < m) & (rho < HPT * TR)"]
    else:
        lines = ["hg = rg",
                 "TR = T",
                 "a0 = n - T  # the new rows: positions n - T .. n - 1",
                 "a1 = n - 1",
                 "rho = tl.arange(0, BM)",
                 "qrow = rho % TR",
                 "i = a0 + qrow",
                 "row_ok = rho < HPT * TR"]
    lines += ["g = hg * HPT + rho // TR  # the head within the group: GROUP x TR rows packed in one tile",
              "h = hk * GROUP + g",
              "row_ok = row_ok & (g < GROUP) & (h >= H0) & (h <= H1) & (i >= 0)"]
    return lines


def _space_names(p: Pass, arg: Args, body: str) -> list:
    """r (token order), LQ and L where the walk's formulas name them."""
    lq, lk = space_lengths(p.space, arg)
    lines = ["r = 0"] if p.space.kind != "diag" and uses_name(body, "r") else []
    lines += [f"LQ = {T(lq)}"] if uses_name(body, "LQ") else []
    return lines + ([f"L = {T(lk)}  # keys in the pass's space"] if uses_name(body, "L") else [])


def _tile_call() -> list:
    return ["acc, m_i, l_i = decode_tile(acc, m_i, l_i, q, k_base, v_base, PT, z, spt, sk0, sk2, sk3, sv0, sv2, sv3,",
            "                            j, keep, n, CAP, FIXED, RINGW, qk_scale, offs_d, D, PAGE, RING, PREC,",
            "                            WIDEN)"]


def decode_kernel(name: str, mask_call: str, p: Pass, arg: Args, doc_space: str) -> list:
    """The decode kernel of pass p (its mask is the module's `_mask_*` function)."""
    spans, randoms = [], []
    ranges = ["# the keys each term allows the tile (key indices of the pass's space)"]
    for ti, t in enumerate(p.terms):
        tr = query_major(t, p.space, arg)
        ranges += [f"# term {ti}: {formula(t.expr())}",
                   f"lo{ti} = {T(tr.lo)}",
                   f"hi{ti} = {T(tr.hi)}"]
        if tr.random is not None:
            randoms.append((ti, tr))
            continue
        ranges += [f"v_lo{ti} = lo{ti} // BN",
                   f"v_hi{ti} = tl.where({T(S.all_of([tr.applies, S.le(S.name(f'lo{ti}'), S.name(f'hi{ti}'))]))}, "
                   f"hi{ti} // BN + 1, v_lo{ti})"]
        spans.append(ti)
    pos = "j = " + T(key_position(p.space, arg, S.add(S.name("b0"), S.name("tl.arange(0, BN)"))))
    keep = f"keep = {mask_call.format(i='i[:, None]', j='j[None, :]')} & row_ok[:, None]"
    body = ranges
    if spans:
        body += ["# this split's share of the terms' tiles, ranked one term after another"]
        body += [f"n_tiles = {' + '.join(f'(v_hi{k} - v_lo{k})' for k in spans)}",
                 "share = (n_tiles + SPLITS - 1) // SPLITS",
                 "w0 = sid * share",
                 "w1 = w0 + share"]
    before = ""  # tiles of the terms before this one
    for idx, ti in enumerate(spans):
        count = f"v_hi{ti} - v_lo{ti}"
        body += [f"first{ti} = v_lo{ti} + clip(w0{before}, 0, {count})",
                 f"end{ti} = v_lo{ti} + clip(w1{before}, 0, {count})",
                 f"for kt in range(first{ti}, end{ti}):",
                 "    b0 = kt * BN", "    " + pos, "    " + keep]
        for e in spans[:idx]:  # a tile an earlier term walks is that term's
            body.append(f"    keep = keep & ((kt < v_lo{e}) | (kt >= v_hi{e}))")
        body += _indent(_tile_call(), 4)
        before += f" - ({count})"
    for idx, (ti, tr) in enumerate(randoms):
        body += _random_loop(ti, tr, spans, randoms[:idx], arg, pos, keep)
    text = "\n".join(body)
    header = ["@triton.jit", f"def {name}("]
    header += _signature()
    header += ["):",
               f'    """Decode, {doc_space}: the newest T rows of the query heads that share kv head hk (GROUP x T',
               '    rows in one tile), against this split\'s share of the cached keys they may attend."""']
    pro = _prologue(p)
    rows = _rows(p, arg)
    rows += _space_names(p, arg, text)
    args = _length_args(arg, "\n".join(rows) + text)
    load = ["offs_d = tl.arange(0, BD)",
            "q_ptrs = Q + z.to(tl.int64) * sq0 + h.to(tl.int64)[:, None] * sq1 + qrow.to(tl.int64)[:, None] * sq2 \\",
            "    + offs_d[None, :] * sq3",
            "q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)",
            "if WIDEN:",
            "    q = q.to(tl.float32)",
            "k_base = K + hk.to(tl.int64) * sk1",
            "v_base = V + hk.to(tl.int64) * sv1",
            "if PAGE == 0:  # a plain cache: the batch row is the first index (a paged one's pages hold it)",
            "    k_base += z.to(tl.int64) * sk0",
            "    v_base += z.to(tl.int64) * sv0",
            "m_i = tl.full([BM], float('-inf'), dtype=tl.float32)",
            "l_i = tl.zeros([BM], dtype=tl.float32)",
            "acc = tl.zeros([BM, BD], dtype=tl.float32)"]
    tail = ["# epilogue: this split's softmax state, normalised; rows that met no key give 0 and lse = -inf",
            "l_safe = tl.where(l_i == 0.0, 1.0, l_i)",
            "out = acc / l_safe[:, None]",
            "lse = tl.where(l_i == 0.0, float('-inf'), (m_i + tl.log2(l_safe)) * 0.6931471805599453)",
            "part = PART0 + sid",
            "o_rows = z.to(tl.int64) * so0 + h.to(tl.int64) * so1 + qrow.to(tl.int64) * so2 + part * sop",
            "tl.store(O + o_rows[:, None] + offs_d[None, :] * so3, out.to(O.dtype.element_ty),",
            "         mask=row_ok[:, None] & (offs_d[None, :] < D))",
            "tl.store(LSE + z.to(tl.int64) * sl0 + h.to(tl.int64) * sl1 + qrow.to(tl.int64) * sl2 + part * slp, lse,",
            "         mask=row_ok)"]
    return header + _indent(pro + args + rows + load + body + tail, 4) + ["", ""]


def _signature() -> list:
    """The parameters, one group per line, from the runtime's table (runtime.abi)."""
    from patternc.runtime import abi

    out = []
    for g in abi.param_groups("decode", False):
        parts = [f"{x.name}: tl.constexpr" if x.constexpr else x.name for x in g.params]
        out.append("    " + ", ".join(parts) + f",  # {g.note}")
    return out


def _length_args(arg: Args, text: str) -> list:
    """The pattern's length-dependent arguments that `text` names, computed from n on the device."""
    lines = []
    for e, name in arg.table.names.items():
        if uses_name(text, name):
            lines.append(f"{name} = {to_triton(e, 'n.to(tl.int64)')}  # {e}")
    return lines


def _random_loop(ti: int, tr, spans: list, earlier: list, arg: Args, pos: str, keep: str) -> list:
    """A random term: for each query block of the new rows, its picked key blocks (picks dealt out to
    splits); a pair counts here only for rows of that query block, and only where no earlier term
    walked it."""
    rb, rr = T(arg(tr.random.b)), T(arg(tr.random.r))
    applies = S.all_of([tr.applies, S.le(S.name("klo"), S.name("khi"))])
    out = [f"# term {ti}: random blocks of the new rows' query blocks",
           f"nkb{ti} = (n + {rb} - 1) // {rb}",
           f"picks{ti} = tl.minimum({rr}, nkb{ti})",
           f"for qb in range(tl.maximum(a0, 0) // {rb}, a1 // {rb} + 1):",
           f"    for pk in range(sid, picks{ti}, SPLITS):",
           f"        kb = random_block(qb, pk, nkb{ti}, picks{ti}, {seed_key(tr.random.seed)})",
           f"        klo = tl.maximum(kb * {rb}, lo{ti})",
           f"        khi = tl.minimum(kb * {rb} + {rb} - 1, hi{ti})",
           f"        kt_hi = tl.where({T(applies)}, khi // BN + 1, klo // BN)",
           "        for kt in range(klo // BN, kt_hi):",
           "            b0 = kt * BN", "            " + pos, "            " + keep,
           f"            keep = keep & (i // {rb} == qb)[:, None]  # this query block's picks"]
    for e in spans:
        out.append(f"            keep = keep & ((kt < v_lo{e}) | (kt >= v_hi{e}))")
    for e, er in earlier:  # an earlier random term's pairs are its own
        eb, erc = T(arg(er.random.b)), T(arg(er.random.r))
        e_applies = T(S.all_of([er.applies, S.le(S.name(f"lo{e}"), S.name(f"hi{e}"))]))
        out += [f"            seen = random_mask(i[:, None], j[None, :], {erc}, {eb}, {er.random.seed}, n)",
                f"            seen = seen & ({e_applies}) & (kt >= lo{e} // BN) & (kt <= hi{e} // BN)",
                "            keep = keep & (seen == 0)"]
    return out + _indent(_tile_call(), 12)
