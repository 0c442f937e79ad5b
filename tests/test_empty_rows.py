"""Query rows with no allowed key over every length (patternc.emptyrows), against brute force,
and the warning that check, compile and analyze give for them (--empty-rows)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from patternc import emptyrows, semantics
from patternc.errors import PatternError

from conftest import resolve_source

BRUTE_N = 160  # brute force looks at every length up to this one


def brute_shortest(p, upto: int = BRUTE_N):
    """The shortest length n <= upto at which the dense mask has a row with no allowed key."""
    for n in range(1, upto + 1):
        try:
            expr = p.at(n)
        except PatternError:
            continue  # an invalid length for this pattern
        heads = range(p.num_heads) if p.num_heads else [0]
        if any(not semantics.dense_mask_numpy(expr, n, head=h).any(axis=1).all() for h in heads):
            return n
    return None


CONSTANT_ATOMS = [
    "causal", "all", "none", "local({a})", "band({a}, {b})", "band(-{b}, -{a})", "band(lo={a})", "band(hi=-{a})",
    "stride({m})", "block({m})", "summary({m}, {c})", "queries({a}, {b})", "keys({a}, {b})", "sink({a})",
    "global({a})", "local({a}, dilation={m})", "rows_mod({m} + 1, {c})",
]
N_ATOMS = ["local(n // {m})", "queries(0, n - {a})", "keys(n // {m}, n)", "random({c}, block={m})",
           "global(at=[n - 1])", "block(cdiv(n, {m}))"]


def random_pattern(rng: random.Random, atoms: list, depth: int = 2) -> str:
    if depth == 0 or rng.random() < 0.3:
        a = rng.randint(0, 9)
        return rng.choice(atoms).format(a=a, b=a + rng.randint(0, 6), m=rng.randint(1, 6), c=rng.randint(0, 1))
    op = rng.choice([" | ", " & ", " - "])
    return f"({random_pattern(rng, atoms, depth - 1)}{op}{random_pattern(rng, atoms, depth - 1)})"


def _cases(atoms, count, seed):
    rng = random.Random(seed)
    return [random_pattern(rng, atoms) for _ in range(count)]


HAND_PICKED = [
    "queries(0, 10)",  # rows 10.. from n = 11 on
    "causal - local(0)",  # row 0 at every length
    "all - local(0)",  # row 0 at n = 1 only
    "block(6) - local(0)",  # the last row when n = 6k + 1
    "causal & (block(7) | summary(5, 1)) - local(0)",  # rows that start a block with no summary key before
    "(causal & stride(3)) - local(2)",  # rows 0, 1, 2
    "band(5, 9)",  # rows 0..4
    "keys(3, 4) | queries(0, 2)",
    "causal & summary(4, 1)",  # rows 0, 1, 2 see no key j % 4 == 3
    "(block(5) & summary(3, 1)) | keys(40, 41)",  # rows of blocks without a j % 3 == 2 key, until 41 keys
    "heads { 0..1: causal, 2..3: causal & summary(6, 2) }",
    "causal & rows_mod(3, 1) | keys(40, 41)",  # rows i % 3 != 1, until 41 keys
    "local(2) & rows_mod(2, 0) | block(4) & stride(2) & rows_mod(2, 1)",  # rows 4k + 3
]


@pytest.mark.parametrize("body", HAND_PICKED + _cases(CONSTANT_ATOMS, 60, 1))
def test_constant_patterns_exactly_match_brute_force(body):
    p = resolve_source(body)
    found = emptyrows.find(p)
    want = brute_shortest(p)
    if want is not None:
        assert found is not None and found.n == want, (body, found)
    else:
        assert found is None or found.n > BRUTE_N, (body, found)
    if found is not None:
        assert found.complete and found.count >= 1
        heads = range(p.num_heads) if p.num_heads else [0]
        masks = [semantics.dense_mask_numpy(p.at(found.n), found.n, head=h) for h in heads]
        empty = [(h, int(r)) for h, m in zip(heads, masks) for r in np.nonzero(~m.any(axis=1))[0]]
        assert found.count == len(empty)
        assert list(found.first) == (empty if p.num_heads else [r for _, r in empty])[:5]


def test_constant_patterns_are_decided_at_lengths_no_sample_hits():
    """Rows 97k (k >= 1) are alone in their block at n = 97k + 1, and rows below 500 also see
    key 0: the first empty row is 582, at n = 583, a length that sampling would not try."""
    p = resolve_source("(block(97) - local(0)) | keys(0, 1) & queries(0, 500)")
    assert 583 not in emptyrows.sample_lengths(p)
    found = emptyrows.find(p)
    assert found is not None and (found.n, found.count, found.first) == (583, 1, (582,)) and found.exhaustive
    assert brute_shortest(p, 583) == 583
    # and a pattern whose period is too long to tabulate falls back to sampling, without error
    wide = resolve_source("causal & (stride(97) | summary(101, 3)) - local(0)")
    assert emptyrows.find(wide).n == 1


@pytest.mark.parametrize("body", _cases(CONSTANT_ATOMS + N_ATOMS, 40, 2))
def test_patterns_that_depend_on_n_match_brute_force_on_short_lengths(body):
    """Every length up to emptyrows.SMALL_N is sampled, so below it the answer is exact."""
    try:
        p = resolve_source(body)
    except PatternError:
        pytest.skip("invalid combination")
    found = emptyrows.find(p)
    want = brute_shortest(p, emptyrows.SMALL_N)
    if want is not None:
        assert found is not None and found.n == want, (body, found)
    elif found is not None:
        assert found.n > emptyrows.SMALL_N and brute_shortest(p, found.n) == found.n, (body, found)


@pytest.mark.parametrize("body", ["local(256) | global(16)", "causal & (local(n // 8) | stride(isqrt(n)))",
                                  "random(3, block=64) | local(96)", "causal & sink(4) | local(n - 1)",
                                  "summary(8, 8) - queries(0, 9) | keys(0, 1)", "all - local(0) & keys(1, 2) | sink(1)"])
def test_never_empty_proofs_hold(body):
    p = resolve_source(body)
    assert emptyrows.never_empty(p.expr), body
    assert emptyrows.find(p) is None
    assert brute_shortest(p, 64) is None


def test_never_empty_is_not_claimed_wrongly():
    for body in HAND_PICKED + ["summary(8, 7)", "local(n // 8) - local(0)", "random(1, block=4)"]:
        assert not emptyrows.never_empty(resolve_source(body).expr), body


def test_report_names_the_rows_and_a_typical_length():
    p = resolve_source("queries(0, 10)")
    found = emptyrows.find(p)
    assert (found.n, found.count, found.first, found.typical) == (11, 1, (10,), 4086)
    assert found.message(p) == ("pattern 'p' leaves query rows with no allowed key (their attention output "
                                "is 0): 1 query row at n = 11 (first: 10), 4086 at n = 4096")


def test_sampled_lengths_cover_small_powers_and_constants():
    p = resolve_source("queries(0, n - 1000)")
    lengths = emptyrows.sample_lengths(p)
    assert set(range(1, 65)) <= set(lengths)
    assert {127, 128, 129, 999, 1000, 1001, 1002, (1 << 31) - 1} <= set(lengths)
    found = emptyrows.find(p)
    assert found is not None and found.n == 1000 and not found.exhaustive  # queries(0, 0): every row


# ---------------------------------------------------------------- the commands

HOLES = "pattern helper = queries(0, 10)\npattern p(w = 4) = causal & local(w) - local(0)\n"
FINE = "pattern fine(w = 4) = causal & local(w)\n"


def test_check_warns_by_default_and_is_strict_or_quiet_on_request(cli, tmp_path):
    f = tmp_path / "holes.attn"
    f.write_text(HOLES)
    r = cli("check", f)
    assert r.returncode == 0 and r.stdout.strip() == f"{f}: ok (2 patterns: helper, p)"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"{f}: warning: pattern 'helper' leaves query rows with no allowed key")
    assert "1 query row at n = 11 (first: 10), 4086 at n = 4096" in lines[0]
    assert lines[1].startswith(f"{f}: warning: pattern 'p' leaves") and "at n = 1 (first: 0)" in lines[1]
    assert "--empty-rows=error" in lines[0]
    r = cli("check", f, "--empty-rows", "error")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"{f}: pattern 'helper' leaves query rows") and "warning" not in r.stderr
    r = cli("check", f, "--empty-rows=ignore")
    assert r.returncode == 0 and r.stderr == ""
    f.write_text(FINE)
    for policy in ("warn", "error"):
        r = cli("check", f, "--empty-rows", policy)
        assert r.returncode == 0 and r.stderr == "", r.stderr


def test_compile_warns_refuses_or_ignores(cli, tmp_path):
    f = tmp_path / "holes.attn"
    f.write_text(HOLES)
    out = tmp_path / "gen.py"
    r = cli("compile", f, "-b", "reference", "-o", out)
    assert r.returncode == 0 and out.exists()
    assert r.stderr.startswith(f"{f}: warning: pattern 'p' leaves query rows"), r.stderr
    out.unlink()
    r = cli("compile", f, "-p", "helper", "-b", "reference", "-o", out, "--empty-rows", "error")
    assert r.returncode == 1 and not out.exists() and "pattern 'helper' leaves query rows" in r.stderr
    r = cli("compile", f, "-b", "reference", "-o", "-", "--empty-rows", "ignore")
    assert r.returncode == 0 and r.stderr == "" and "attention = _bound.attention" in r.stdout
    # -D values count: with a window of 0 nothing but the removed diagonal is left
    r = cli("compile", f, "-b", "reference", "-o", out, "-D", "w=0", "--empty-rows", "error")
    assert r.returncode == 1 and "at n = 1 (first: 0), 4096 at n = 4096" in r.stderr


def test_check_compile_and_analyze_agree(cli, tmp_path):
    """The same pattern gets the same verdict from all three commands, under each policy."""
    f = tmp_path / "holes.attn"
    f.write_text("pattern q = queries(0, 10)\n")
    for policy, rc in (("warn", 0), ("error", 1), ("ignore", 0)):
        results = [cli("check", f, "--empty-rows", policy),
                   cli("compile", f, "-b", "reference", "-o", tmp_path / "q.py", "--empty-rows", policy),
                   cli("analyze", f, "--n", 64, "--json", "--empty-rows", policy)]
        for r in results:
            assert r.returncode == rc, (policy, r.args, r.stderr)
            assert ("no allowed key" in r.stderr) == (policy != "ignore"), (policy, r.args, r.stderr)
            assert ("warning:" in r.stderr) == (policy == "warn"), (policy, r.args, r.stderr)
