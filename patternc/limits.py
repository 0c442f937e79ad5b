"""The documented limits of `patternc analyze` and `patternc.analyze` (README, docs/language.md).

Kept apart from the analysis so that the command line can check its options without
importing numpy.  Dense outputs have their own, smaller limits: `patternc mask` writes an
n x n array (cli.MAX_MASK_N) and `patternc show` evaluates every pair (show.MAX_N).
"""
from __future__ import annotations

MAX_N = 1 << 30  # sequence length: closed forms are exact far beyond, the exact counts use int64
MAX_HEADS = 1 << 16
MAX_TILE = 1 << 30
MAX_HEAD_DIM = 1 << 16
MAX_CP = 1024  # ranks of `analyze --cp`: the plan has P^2 (rank, rank) pairs

# Parts of the analysis whose cost grows with n are bounded rather than refused: above these,
# the report says what it skipped and why (Analysis.skipped).
EXACT_WORK = 1 << 22  # ranges/rows the exact counter may visit (counting.Engine.work)
TILE_ROWS = 1 << 17  # query tiles of the tile map and of the kernel simulation
DENSE_FALLBACK_N = 16384  # tiles of patterns the counter can only count pair by pair
