"""The kernels' parameters, described once.

The Triton backend prints each kernel's signature from these tables, and the runtime
launches each kernel by keyword with the same names, so the two cannot drift apart.
A parameter group is present only where the kernel uses it: the split group (chunks of
a global row's walk) only in passes that have global rows or columns, and the pattern's
length-dependent arguments (`_a0`, ...) only in patterns that have them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    constexpr: bool = False  # a compile-time constant of the kernel (tl.constexpr)
    specialize: bool = True  # False: one compilation serves every value (do_not_specialize)


@dataclass(frozen=True)
class Group:
    """Parameters that belong together, printed on one line with a comment."""

    note: str
    params: tuple

    @property
    def names(self) -> tuple:
        return tuple(p.name for p in self.params)


def _ints(*names: str) -> tuple:
    return tuple(Param(x) for x in names)


def _consts(*names: str) -> tuple:
    return tuple(Param(x, constexpr=True) for x in names)


def _stride_params(*tensors: str) -> tuple:
    return tuple(Param(f"s{t}{d}") for t in tensors for d in range(4))


# The chunks of a global row's (column's) walk: the normal launch does chunk 0, a PARTIAL launch
# the others into scratch rows.  PARTIAL and NOUT differ between the two launches and must not
# specialise them, so one compilation serves both.
SPLIT = Group("split walks of global rows",
              _ints("SPLIT0", "SPLIT1", "SPLIT2", "SPLIT3", "CH", "RS") + (Param("PARTIAL", specialize=False),))

FWD = (
    Group("tensors", _ints("Q", "K", "V", "O", "LSE")),
    Group("TMA descriptors (None: pointer loads)", _ints("KD", "VD", "QD")),
    Group("strides", _stride_params("q", "k", "v", "o")),
    Group("shape", _ints("n", "HTOT", "HC", "GROUP", "HEAD0", "PER") + (Param("NOUT", specialize=False),)),
    Group("softmax scale in log2 units", _ints("qk_scale")),
)
FWD_CONSTS = Group("compile-time settings", _consts("BM", "BN", "BD", "D", "PREC", "WIDEN", "TMA", "QTMA"))
# A later pass's forward continues the softmax state of the passes before it (in OI), except in
# its split launches, which start afresh into scratch rows.
SEEDED = Group("the earlier passes' state: float32 out and lse", _ints("OI") + _consts("SEEDED"))
# A pass whose later query tiles walk more keys runs them last-first where REV is set.
REV = Group("launch the query tiles last-first", _consts("REV"))

DQ = (
    Group("tensors", _ints("Q", "K", "V", "DO", "DQ", "LSE2", "DELTA", "O", "LSE")),
    Group("TMA descriptors (None: pointer loads)", _ints("KD", "VD", "QD", "DOD")),
    Group("strides", _stride_params("q", "k", "v", "do", "dq", "o")),
    Group("shape", _ints("n", "HTOT", "HC", "GROUP", "HEAD0", "PER") + (Param("NOUT", specialize=False),)),
    Group("scales; PRO: compute delta and lse2 first", _ints("qk_scale", "sm_scale") + (Param("PRO", specialize=False),)),
)
DQ_CONSTS = Group("compile-time settings", _consts("ACCUM", "BM", "BN", "BD", "D", "PREC", "WIDEN", "TMA", "QTMA"))

DKDV = (
    Group("tensors (DQ: float32, where FUSED adds dq)", _ints("Q", "K", "V", "DO", "DK", "DV", "LSE2", "DELTA", "DQ")),
    Group("TMA descriptors (None: pointer loads)", _ints("QD", "DOD", "DQD")),
    Group("strides", _stride_params("q", "k", "v", "do", "dk", "dq")),
    Group("shape", _ints("n", "HTOT", "KC", "GROUP", "H0", "H1", "KV0", "PER") + (Param("NOUT", specialize=False),)),
    Group("scales", _ints("qk_scale", "sm_scale")),
)
DKDV_CONSTS = Group("compile-time settings", _consts("ACCUM", "BM", "BN", "BD", "D", "PREC", "WIDEN", "TMA", "FUSED",
                                                     "RED_TMA"))

# Decoding (runtime.decode_launch): the newest T rows of a kv head's query heads against one split
# of their allowed cached keys.  n comes from SEQ on the device (never from the host, so a step
# can be captured in a CUDA graph), and so do the pattern's length-dependent arguments.
DECODE = (
    Group("queries, caches, output (or split partials), cache_seqlens, page table",
          _ints("Q", "K", "V", "O", "LSE", "SEQ", "PT")),
    Group("strides", _stride_params("q", "k", "v", "o") + _ints("sop", "sl0", "sl1", "sl2", "slp", "spt")),
    Group("shape; this launch's heads, row groups, first partial, splits",
          _ints("T", "GROUP", "H0", "H1", "KV0", "KC", "HPT", "NHG", "PART0", "SPLITS", "CAP")),
    Group("RING: positions < FIXED in own slots, later ones in a ring of RINGW", _ints("FIXED", "RINGW")),
    Group("softmax scale in log2 units", _ints("qk_scale")),
)
DECODE_CONSTS = Group("compile-time settings", _consts("BM", "BN", "BD", "D", "PAGE", "RING", "PREC", "WIDEN"))

KERNELS = {"fwd": (FWD, FWD_CONSTS), "dq": (DQ, DQ_CONSTS), "dkdv": (DKDV, DKDV_CONSTS),
           "decode": (DECODE, DECODE_CONSTS)}

# Packed documents and padded rows (runtime.varlen), in every whole-sequence kernel.  DOCS = 1: program axis 1
# counts documents, whose offsets are SEQ (cu_seqlens); DOCS = 2: batch rows, whose sequences start
# at SEQ and are SEQ_LEN long; 0: plain rows (SEQ and SEQ_LEN None).  Under DOCS each program reads
# its own sequence's length and computes the pattern's length-dependent arguments from it, so the
# launch passes n, NOUT, PER and those arguments as 0, and the rows per (batch, head) of the tensors
# (NROW) and the tiles per residue class at the longest sequence (SPER) unspecialised: lengths that
# change compile nothing new.
SEQS = Group("packed or padded sequences (runtime.varlen)",
             _ints("SEQ", "SEQ_LEN") + (Param("NROW", specialize=False), Param("SPER", specialize=False))
             + _consts("DOCS"))

# A pattern with select(k, block=b, qblock=qb): the run-time selection (contiguous int32, HS
# selection heads of NQB query blocks; query head h reads selection head h // SELG), the
# forward's block mass (MASSO, float32 (B, H, NQB * qb / BM, k): one row per query tile, summed
# per query block by the host; MASS: computed at all), and the dk/dv kernel's key-major inverse
# (INV_OFF, INV_QB: runtime.selection.Selection.inverse).
SELECTED = {
    "fwd": Group("the run-time selection and its block mass", _ints("SEL", "HS", "SELG", "NQB", "MASSO")
                 + _consts("MASS")),
    "dq": Group("the run-time selection", _ints("SEL", "HS", "SELG", "NQB")),
    "dkdv": Group("the run-time selection and its key-major inverse",
                  _ints("SEL", "HS", "SELG", "NQB", "INV_OFF", "INV_QB")),
}

def param_groups(kind: str, split: bool, args: tuple = (), seeded: bool = False, rev: bool = False,
                 select: bool = False) -> tuple:
    """The parameter groups of a kernel of `kind` ("fwd", "dq", "dkdv", "decode"), in signature order;
    `seeded`: a forward that continues earlier passes' state; `rev`: a kernel that may run its tiles
    last-first; `select`: a kernel of a pattern with select(...)."""
    runtime, consts = KERNELS[kind]
    out = list(runtime)
    if select:
        out.append(SELECTED[kind])
    if seeded:
        out.append(SEEDED)
    if rev:
        out.append(REV)
    if split:
        out.append(SPLIT)
    if args:
        out.append(Group("the pattern's length-dependent arguments", _ints(*args)))
    if kind != "decode":  # a decode row's length is its cache_seqlens entry already
        out.append(SEQS)
    out.append(consts)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def param_names(kind: str, split: bool, args: tuple = (), seeded: bool = False, rev: bool = False,
                select: bool = False) -> tuple:
    """Every parameter name of such a kernel, in order."""
    return tuple(x for g in param_groups(kind, split, args, seeded, rev, select) for x in g.names)


def unspecialized(kind: str, split: bool) -> tuple:
    """Names the kernel must not specialise on: the sequences' sizes (they change from call to call),
    and the split group's, and the shape's scratch rows, in split kernels (only they have launches
    that differ in them)."""
    return tuple(p.name for g in param_groups(kind, split) if split or g is SEQS for p in g.params
                 if not p.specialize)


# The indexer of a pattern with select(...) (select_blocks on the GPU): one program per (query
# block, batch element x selection head), writing the top k key blocks of each query block.
INDEX = (
    Group("tensors: indexer queries, key block means, weights, the output blocks", _ints("QI", "KM", "W", "OUT")),
    Group("shape", _ints("n", "NKB", "HS")),
)
INDEX_CONSTS = Group("compile-time settings", _consts("HI", "PER", "DI", "BDI", "QBLK", "BLK", "K", "KPAD", "BKB",
                                                      "W_MODE"))


def index_params(args: tuple = ()) -> tuple:
    """The indexer kernel's parameter groups, in signature order."""
    extra = (Group("the pattern's length-dependent arguments", _ints(*args)),) if args else ()
    return INDEX + extra + (INDEX_CONSTS,)
