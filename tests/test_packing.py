"""The cost of a packed batch (patternc.packing, `patternc analyze --doc-lens`): sums over documents,
each its own sequence, against brute force on the dense mask of every document."""
from __future__ import annotations

import json

import numpy as np
import pytest

import patternc
from patternc import semantics
from patternc.backends.schedule import choose_forward_tiles
from patternc.backends.walks import computed_pairs
from patternc.errors import PatternError
from patternc.packing import analyze_packed, parse_doc_lens

PATTERNS = {
    "longformer": "local(9) | global(3)",
    "streaming": "causal & (sink(4) | local(20))",
    "strided_sqrt": "causal & (local(isqrt(n) - 1) | stride(isqrt(n)))",
    "prefix_half": "causal | (queries(0, n // 2) & keys(0, n // 2))",
    "empty_rows": "queries(2, 7)",
    "heads": "heads { 0..1: local(3), 2..2: causal & stride(4) }",
}


def brute(pattern, lens: list, H: int, bm: int, bn: int) -> dict:
    """nnz, pairs inside non-empty tiles (each document tiled from its own first row), tile counts and
    empty rows, from each document's dense mask."""
    nnz = visited = empty = 0
    counts = {"empty": 0, "partial": 0, "full": 0, "total": 0}
    for m in lens:
        if not m:
            continue
        e = pattern.at(m)
        masks = [semantics.dense_mask_numpy(e.for_head(h), m) for h in range(H)] if pattern.num_heads else \
            [semantics.dense_mask_numpy(e, m)] * H
        for mask in masks:
            nnz += int(mask.sum())
            empty += int((~mask.any(1)).sum())
            for a in range(0, m, bm):
                for b in range(0, m, bn):
                    tile = mask[a:a + bm, b:b + bn]
                    counts["total"] += 1
                    if tile.all():
                        counts["full"] += 1
                    elif tile.any():
                        counts["partial"] += 1
                    else:
                        counts["empty"] += 1
                    if tile.any():
                        visited += tile.size
    return dict(nnz=nnz, visited=visited, tiles=counts, empty=empty)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("tile", [16, (8, 32)])
def test_packed_costs_are_sums_over_documents(name, tile):
    p = patternc.parse(f"pattern x = {PATTERNS[name]}")
    rng = np.random.default_rng(len(name))
    lens = [int(x) for x in rng.integers(1, 90, 6)] + [0, 37, 37]
    H = p.num_heads or 2
    a = analyze_packed(p, lens, heads=None if p.num_heads else 2, tile=tile, head_dim=64)
    bm, bn = (tile, tile) if isinstance(tile, int) else tile
    want = brute(p, lens, H, bm, bn)
    total = sum(lens)
    assert a.documents == len(lens) and a.total == total and a.heads == H
    assert a.nnz == want["nnz"]
    assert a.tiles == want["tiles"]
    assert a.tile_efficiency == pytest.approx(want["nnz"] / want["visited"])
    assert a.empty_rows == want["empty"]
    assert a.density == pytest.approx(want["nnz"] / (H * total * total))
    assert a.density_in_documents == pytest.approx(want["nnz"] / (H * sum(m * m for m in lens)))
    assert a.flops_fwd == 4 * want["nnz"] * 64 and a.flops_bwd == 10 * want["nnz"] * 64
    assert [(c.length, c.documents) for c in a.lengths] == sorted({(m, lens.count(m)) for m in lens if m})


def test_one_document_is_the_single_sequence_analysis():
    p = patternc.parse("pattern x = local(9) | global(3)")
    single = patternc.analyze(p, 300, heads=4, tile=32)
    packed = patternc.analyze(p, heads=4, tile=32, doc_lens=[300])
    for key in ("nnz", "density", "flops_fwd", "flops_bwd", "tiles", "tile_efficiency", "kernel_tile_efficiency",
                "empty_rows"):
        assert packed.to_dict()[key] == single.to_dict()[key], key


def test_kernel_tile_efficiency_sums_the_kernels_computed_pairs():
    p = patternc.parse(f"pattern x = {PATTERNS['streaming']}")
    lens = [1, 63, 64, 65, 300, 300]
    a = patternc.analyze(p, heads=2, doc_lens=lens)
    bm, bn = choose_forward_tiles(p)
    assert a.kernel_tile == (bm, bn)
    computed = sum(2 * computed_pairs(p.at(m), m, bm, bn) for m in lens)
    assert a.kernel_tile_efficiency == pytest.approx(a.nnz / computed)
    assert patternc.analyze(p, heads=2, doc_lens=lens, kernel=False).kernel_tile_efficiency is None


def test_packed_analysis_errors():
    p = patternc.parse("pattern x = causal & fixed(isqrt(n), 2)")
    with pytest.raises(PatternError, match=r"at document length 1: fixed\(\)"):
        patternc.analyze(p, doc_lens=[9, 1])
    with pytest.raises(PatternError, match=r"give the sequence length n, or doc_lens .*not both"):
        patternc.analyze(p, 9, doc_lens=[9])
    with pytest.raises(PatternError, match=r"give the sequence length n, or doc_lens"):
        patternc.analyze(p)
    for bad, match in (([9, -1], r"doc_lens\[1\] must be >= 0"), ([0, 0], r"at least one document"),
                       ([9, 2.5], r"doc_lens\[1\] must be an integer"), ("9,4", r"must be a list"),
                       ([1 << 31], r"too large")):
        with pytest.raises(PatternError, match=match):
            patternc.analyze(p, doc_lens=bad)
    assert parse_doc_lens("# lengths\n9, 16\n 25 0\t36 # last\n", "f") == (9, 16, 25, 0, 36)
    with pytest.raises(PatternError, match=r"line 2: expected a document length .*got '1e3'"):
        parse_doc_lens("9\n1e3\n", "f")


def test_cli_doc_lens(cli, tmp_path):
    src = tmp_path / "p.attn"
    src.write_text(f"pattern p = {PATTERNS['longformer']}\n")
    r = cli("analyze", src, "--doc-lens", "100,3,0,250", "--heads", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    want = patternc.analyze(patternc.parse(src), heads=2, doc_lens=[100, 3, 0, 250]).to_dict()
    assert data == json.loads(json.dumps(want))
    assert data["documents"] == 4 and data["total_tokens"] == 353
    lens = tmp_path / "lens.txt"
    lens.write_text("100\n3\n0\n250  # the long one\n")
    r2 = cli("analyze", src, "--doc-lens-from", lens, "--heads", "2", "--json")
    assert r2.returncode == 0 and json.loads(r2.stdout) == data
    table = cli("analyze", src, "--doc-lens", "100,3,0,250")
    assert table.returncode == 0 and "4 (3 distinct lengths, 3 to 250)" in table.stdout
    assert "tile efficiency" in table.stdout and "kernel tile eff." in table.stdout


@pytest.mark.parametrize("args", [["--n", "10", "--doc-lens", "4"], []])
def test_cli_one_size_is_a_usage_error(cli, tmp_path, args):
    """--n, --doc-lens and --doc-lens-from: exactly one, or argparse's usage error (exit 2)."""
    src = tmp_path / "p.attn"
    src.write_text("pattern p = causal\n")
    r = cli("analyze", src, *args, cwd=tmp_path)
    assert r.returncode == 2 and "--doc-lens" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--doc-lens", "4,x"], "--doc-lens: expected a document length (a non-negative integer), got 'x'"),
    (["--doc-lens", "0"], "--doc-lens: doc_lens must hold at least one document of length >= 1"),
    (["--doc-lens-from", "missing.txt"], "missing.txt: cannot read document lengths"),
])
def test_cli_doc_lens_errors(cli, tmp_path, args, message):
    src = tmp_path / "p.attn"
    src.write_text("pattern p = causal\n")
    r = cli("analyze", src, *args, cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_cli_doc_lens_warns_about_rows_with_no_key(cli, tmp_path):
    src = tmp_path / "p.attn"
    src.write_text("pattern p = queries(2, 7)\n")
    r = cli("analyze", src, "--doc-lens", "10,3")
    assert r.returncode == 0 and "7 query rows of the packed batch have no allowed key" in r.stderr
    r = cli("analyze", src, "--doc-lens", "10,3", "--empty-rows", "error")
    assert r.returncode == 1
