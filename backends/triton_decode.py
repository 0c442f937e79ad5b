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
from .kernel_text import T, indent

BODIES = ("cache_bases", "decode_tile", "load_new_rows", "new_rows", "store_new_rows")


def _prologue(p: Pass) -> list:
    """Program ids -> (split sid, batch row z, kv head hk, row group rg), and this row's length n."""
    return ["sid = tl.program_id(0)  # which split of the keys",
            "z = tl.program_id(1) // KC",
            "hk = KV0 + tl.program_id(1) % KC",
            "rg = tl.program_id(2)  # row group: " + ("residue class x heads" if p.space.kind == "diag" else "heads"),
            "n = tl.load(SEQ + z).to(tl.int32)  # this row's length, new tokens included"]


def imports(kernel_text: str) -> str:
    """The import of the runtime's decode functions that the kernels use."""
    used = [x for x in BODIES if uses_name(kernel_text, x)]
    return f"from patternc.runtime.decode_bodies import {', '.join(used)}" if used else ""


def _rows(p: Pass, arg: Args) -> list:
    """The query tile: [a0, a1] in the pass's space, and its rows (runtime.decode_bodies.new_rows)."""
    if p.space.kind == "diag":
        lines = ["cls = rg // NHG  # new rows of q cls, cls + m, ...: one residue class",
                 "hg = rg % NHG",
                 f"m = {T(arg(p.space.m))}",
                 "r = floor_mod(n - T + cls, m)  # the class: positions r, r + m, r + 2*m, ...",
                 "a0 = floor_div(n - T + cls, m)",
                 "TR = tl.maximum((T - cls + m - 1) // m, 1)  # new rows in this class (if cls < m)",
                 "a1 = a0 + TR - 1",
                 "qrow, i, h, row_ok = new_rows(n, T, cls, m, TR, hg, hk, GROUP, HPT, H0, H1, BM)"]
    else:
        lines = ["a0 = n - T  # the new rows: positions n - T .. n - 1",
                 "a1 = n - 1",
                 "qrow, i, h, row_ok = new_rows(n, T, 0, 1, T, rg, hk, GROUP, HPT, H0, H1, BM)"]
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


def decode_kernel(signature: list, mask_call: str, p: Pass, arg: Args) -> list:
    """The decode kernel of pass p after its `signature` lines (printed from runtime.abi by the
    backend); its mask is the module's `_mask_*` function."""
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
        body += indent(_tile_call(), 4)
        before += f" - ({count})"
    for idx, (ti, tr) in enumerate(randoms):
        body += _random_loop(ti, tr, spans, randoms[:idx], arg, pos, keep)
    text = "\n".join(body)
    header = signature + [
        '    """Decode: the newest T rows of the query heads that share kv head hk (GROUP x T rows in one',
        f'    tile), against this split\'s share of the cached keys they may attend.  Space: {p.space.describe()}."""']
    pro = _prologue(p)
    rows = _rows(p, arg)
    rows += _space_names(p, arg, text)
    args = _length_args(arg, "\n".join(rows) + text)
    load = ["offs_d = tl.arange(0, BD)",
            "q = load_new_rows(Q, z, h, qrow, row_ok, sq0, sq1, sq2, sq3, offs_d, D, WIDEN)",
            "k_base, v_base = cache_bases(K, V, z, hk, sk0, sk1, sv0, sv1, PAGE)",
            "m_i = tl.full([BM], float('-inf'), dtype=tl.float32)",
            "l_i = tl.zeros([BM], dtype=tl.float32)",
            "acc = tl.zeros([BM, BD], dtype=tl.float32)"]
    tail = ["store_new_rows(O, LSE, z, h, qrow, PART0 + sid, row_ok, acc, m_i, l_i, so0, so1, so2, so3, sop, sl0, sl1,",
            "               sl2, slp, offs_d, D)  # this split's partial result"]
    return header + indent(pro + args + rows + load + body + tail, 4) + ["", ""]


def _length_args(arg: Args, text: str) -> list:
    """The pattern's length-dependent arguments that `text` names, computed from n on the device."""
    return [f"{name} = as_i32({to_triton(e)})  # {e}" for e, name in arg.table.names.items() if uses_name(text, name)]


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
    return out + indent(_tile_call(), 12)
