"""The indexer kernel of a pattern with `select(...)`: select_blocks on the GPU.

One program per (query block, batch element x selection head) scores the query block against
chunks of key-block means and keeps a running top K in registers, so no (n/b) x (n/b) score
matrix exists anywhere.  The score and the tie rule are runtime.select_index's (its PyTorch
path is the definition this kernel is tested against); the candidate rule, which key blocks the
pattern's outer terms allow and its static terms do not cover, is compiled in from the pattern.
"""
from __future__ import annotations

from patternc import ir
from patternc import scalar as S
from patternc.frontend import Pattern
from patternc.lower import to_terms
from patternc.printer import ArgTable
from patternc.ranges import Args, select_candidates
from patternc.runtime import abi

from .common import head_cases
from .kernel_text import indent, param_lines


def index_kernel(pattern: Pattern, arg: Args, table: ArgTable) -> list:
    """`_select_index`: select_blocks on the GPU (runtime.select_index has the score and the rules).
    One program per (query block, batch element x selection head): the block's rows' indexer
    queries against chunks of BKB key-block means, the pattern's candidate rule, and a running
    top K in registers, merged chunk by chunk (ties to the lower block)."""
    rule = S.any_of([select_candidates(to_terms(x), arg) for _, _, x in head_cases(pattern) if ir.has_select(x)])
    lines = ["@triton.jit", "def _select_index("] + param_lines(abi.index_params(tuple(table.names.values()))) + [
        "):",
        '    """select_blocks: the top K key blocks of one query block, by the score of runtime.select_index,',
        '    among the candidates (the pattern\'s outer terms allow them, its static terms do not cover them)."""']
    body = [
        "qb = tl.program_id(0)",
        "zs = tl.program_id(1)",
        "z = (zs // HS).to(tl.int64)",
        "hs = zs % HS",
        "a0 = qb * QBLK",
        "a1 = tl.minimum(a0 + QBLK - 1, n - 1)",
        "rows = a0 + tl.arange(0, QBLK)",
        "row_ok = rows < n",
        "offs = tl.arange(0, BDI)",
        "slot = tl.arange(0, KPAD)",
        "# the running top K: (score, block); padding slots hold +inf so that they are never the worst",
        "best_v = tl.where(slot < K, float('-inf'), float('inf'))",
        "best_i = tl.where(slot < K, NKB + slot, -1)",
        "for k0 in range(0, NKB, BKB):",
        "    kbs = k0 + tl.arange(0, BKB)",
        "    b0 = kbs * BLK",
        "    b1 = tl.minimum(b0 + BLK - 1, n - 1)",
        f"    cand = ({S.triton(rule)}) & (kbs < NKB)",
        "    if tl.max(cand.to(tl.int32), 0) > 0:  # chunks without a candidate cost nothing",
        "        km_ptrs = KM + ((z * HS + hs) * NKB + kbs.to(tl.int64))[:, None] * DI + offs[None, :]",
        "        km = tl.load(km_ptrs, mask=(kbs < NKB)[:, None] & (offs < DI)[None, :], other=0.0)",
        "        score = tl.zeros([BKB], dtype=tl.float32)",
        "        for hh in range(0, PER):  # the indexer heads of this selection head",
        "            h = hs * PER + hh",
        "            q_ptrs = QI + ((z * HI + h) * n + rows.to(tl.int64))[:, None] * DI + offs[None, :]",
        "            qi = tl.load(q_ptrs, mask=row_ok[:, None] & (offs < DI)[None, :], other=0.0)",
        "            s = tl.maximum(tl.dot(qi, tl.trans(km)), 0.0)  # ReLU(q . mean key)",
        "            if W_MODE == 1:  # one weight per head",
        "                s = s * tl.load(W + h)",
        "            if W_MODE == 2:  # one weight per head and token",
        "                s = s * tl.load(W + (z * HI + h) * n + rows, mask=row_ok, other=0.0)[:, None]",
        "            score += tl.sum(tl.where(row_ok[:, None], s, 0.0), 0)",
        "        score = tl.where(cand, score, float('-inf'))",
        "        # merge: the chunk's best replaces the running worst while it beats it.  Only the blocks",
        "        # above the worst so far can enter (a tie loses: its block is higher), so that many rounds",
        "        # at most, not K: later chunks seldom hold more than a few",
        "        beats = tl.sum((score > tl.min(best_v, 0)).to(tl.int32), 0)",
        "        for t in range(0, tl.minimum(beats, K)):",
        "            m = tl.max(score, 0)",
        "            mi = tl.min(tl.where(score == m, kbs, 2147483647), 0)",
        "            worst = tl.min(best_v, 0)",
        "            wi = tl.max(tl.where(best_v == worst, best_i, -1), 0)",
        "            take = (m > float('-inf')) & ((m > worst) | ((m == worst) & (mi < wi)))",
        "            hit = tl.where(take, (best_v == worst) & (best_i == wi), False)",
        "            best_v = tl.where(hit, m, best_v)",
        "            best_i = tl.where(hit, mi, best_i)",
        "            score = tl.where(kbs == mi, float('-inf'), score)",
        "# best first (ties to the lower block), -1 for slots no candidate filled",
        "out_base = OUT + ((z * HS + hs) * ((n + QBLK - 1) // QBLK) + qb) * K",
        "for t in range(0, K):",
        "    m = tl.max(tl.where(slot < K, best_v, float('-inf')), 0)",
        "    mi = tl.min(tl.where((slot < K) & (best_v == m), best_i, 2147483647), 0)",
        "    tl.store(out_base + t, tl.where(m > float('-inf'), mi, -1).to(tl.int32))",
        "    taken = (best_v == m) & (best_i == mi)",
        "    best_v = tl.where(taken, float('-inf'), best_v)",
        "    best_i = tl.where(taken, 2147483647, best_i)",
    ]
    return lines + indent(body, 4) + ["", ""]
