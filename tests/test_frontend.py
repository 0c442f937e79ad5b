"""The language, checked against its definition.

Every primitive and operator is compared, pair by pair, with its formula from
the language table written out here in plain Python; precedence and
associativity are checked against parses that would give a different mask.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from patternc import ir, semantics
from patternc.errors import PatternError
from patternc.frontend import check_program, parse_program, resolve

from conftest import resolve_source

SIZES = (1, 2, 7, 24, 41)


def brute(pred, n: int) -> np.ndarray:
    """The mask from a predicate, one pair at a time."""
    return np.array([[bool(pred(i, j, n)) for j in range(n)] for i in range(n)], dtype=bool).reshape(n, n)


def mask_of(src: str, n: int, head: int = 0, **params) -> np.ndarray:
    p = resolve_source(src, **params)
    return semantics.dense_mask_numpy(p.at(n), n, head=head)


# The language table: (surface syntax, allowed(i, j, n) written out by hand).
PRIMITIVES = [
    ("all", lambda i, j, n: True),
    ("none", lambda i, j, n: False),
    ("causal", lambda i, j, n: j <= i),
    ("local(0)", lambda i, j, n: i == j),
    ("local(3)", lambda i, j, n: abs(i - j) <= 3),
    ("local(2, dilation=3)", lambda i, j, n: abs(i - j) <= 6 and (i - j) % 3 == 0),
    ("local(w=1, dilation=4)", lambda i, j, n: abs(i - j) <= 4 and (i - j) % 4 == 0),
    ("band(-2, 5)", lambda i, j, n: -2 <= i - j <= 5),
    ("band(1, 1)", lambda i, j, n: i - j == 1),
    ("band(lo=3)", lambda i, j, n: i - j >= 3),
    ("band(hi=-1)", lambda i, j, n: i - j <= -1),
    ("global(2)", lambda i, j, n: i < 2 or j < 2),
    ("global(0)", lambda i, j, n: False),
    ("global(at=[0, 7, 11])", lambda i, j, n: i in (0, 7, 11) or j in (0, 7, 11)),
    ("sink(3)", lambda i, j, n: j < 3),
    ("queries(4, 9)", lambda i, j, n: 4 <= i < 9),
    ("keys(2, 6)", lambda i, j, n: 2 <= j < 6),
    ("stride(4)", lambda i, j, n: (i - j) % 4 == 0),
    ("stride(1)", lambda i, j, n: True),
    ("block(6)", lambda i, j, n: i // 6 == j // 6),
    ("block(1)", lambda i, j, n: i == j),
    ("summary(5, 2)", lambda i, j, n: j % 5 >= 5 - 2),
    ("summary(4, 4)", lambda i, j, n: True),
    ("fixed(6, 2)", lambda i, j, n: i // 6 == j // 6 or j % 6 >= 4),
    ("rows_mod(3, 1)", lambda i, j, n: i % 3 == 1),
    ("rows_mod(4)", lambda i, j, n: i % 4 == 0),
    ("rows_mod(1)", lambda i, j, n: True),
    ("block(8) & stride(2) & rows_mod(2, 1)", lambda i, j, n: i // 8 == j // 8 and i % 2 == 1 and j % 2 == 1),
    # integer expressions over n, evaluated per length
    ("local(isqrt(n))", lambda i, j, n: abs(i - j) <= math.isqrt(n)),
    ("sink(n // 4) | queries(n // 2, n)", lambda i, j, n: j < n // 4 or n // 2 <= i < n),
    ("band(-(n // 3), cdiv(n, 4))", lambda i, j, n: -(n // 3) <= i - j <= -(-n // 4)),
    ("local(min(3, n % 5 + 1), dilation=max(1, 2))",
     lambda i, j, n: abs(i - j) <= 2 * min(3, n % 5 + 1) and (i - j) % 2 == 0),
    ("stride(2 * 3 - 1)", lambda i, j, n: (i - j) % 5 == 0),
    ("block(-(-7))", lambda i, j, n: i // 7 == j // 7),
    ("keys(n - n // 3, n)", lambda i, j, n: n - n // 3 <= j),
    ("rows_mod(n // 3 + 2, n % 2)", lambda i, j, n: i % (n // 3 + 2) == n % 2),
]

OPERATORS = [
    ("local(3) | stride(5)", lambda i, j, n: abs(i - j) <= 3 or (i - j) % 5 == 0),
    ("local(6) & stride(2)", lambda i, j, n: abs(i - j) <= 6 and (i - j) % 2 == 0),
    ("local(6) - stride(2)", lambda i, j, n: abs(i - j) <= 6 and (i - j) % 2 != 0),
    ("causal - local(0)", lambda i, j, n: j < i),
    ("all - causal", lambda i, j, n: j > i),
    ("(sink(2) | block(4)) & causal", lambda i, j, n: (j < 2 or i // 4 == j // 4) and j <= i),
    ("causal & (local(7) | stride(8))", lambda i, j, n: j <= i and (i - j <= 7 or (i - j) % 8 == 0)),
    ("local(4) | global(2) - block(3)",
     lambda i, j, n: (abs(i - j) <= 4 or i < 2 or j < 2) and i // 3 != j // 3),
]


@pytest.mark.parametrize("src,pred", PRIMITIVES + OPERATORS, ids=[s for s, _ in PRIMITIVES + OPERATORS])
def test_primitive_and_operator_formulas(src, pred):
    for n in SIZES:
        got = mask_of(src, n)
        assert got.shape == (n, n) and got.dtype == bool
        np.testing.assert_array_equal(got, brute(pred, n), err_msg=f"{src} at n={n}")


def test_random_matches_its_definition():
    """random(r, block=b, seed): key blocks are cut into min(r, #blocks) equal segments and each
    query block picks one block per segment by the 32-bit hash; a pair is allowed when its key
    block is picked by its query block.  Written forwards here, as loops over picks."""
    MASK = 0xFFFFFFFF

    def mix(x):
        x ^= x >> 16
        x = (x * semantics.HASH_MUL) & MASK
        x ^= x >> 16
        x = (x * semantics.HASH_MUL) & MASK
        return x ^ (x >> 16)

    for r, b, seed, n in [(2, 4, 0, 30), (3, 5, 7, 41), (1, 8, 123, 8), (9, 3, 5, 17), (2, 64, 1, 40)]:
        nkb = -(-n // b)
        picks = min(r, nkb)
        chosen = {}
        for qb in range(nkb):
            chosen[qb] = set()
            for t in range(picks):
                start, end = t * nkb // picks, (t + 1) * nkb // picks
                h = mix((seed * semantics.HASH_SEED + qb * semantics.HASH_QB + t * semantics.HASH_T + 1) & MASK)
                chosen[qb].add(start + h % (end - start))
            assert len(chosen[qb]) == picks  # one pick per segment: distinct
        want = brute(lambda i, j, n: j // b in chosen[i // b], n)
        got = mask_of(f"random({r}, block={b}, seed={seed})", n)
        np.testing.assert_array_equal(got, want, err_msg=f"random({r}, {b}, {seed}) at n={n}")
        # every query row sees exactly `picks` key blocks (the last one may be short)
        rows_blocks = {frozenset(np.nonzero(got[i])[0] // b) for i in range(n)}
        assert all(len(s) == picks for s in rows_blocks)


def test_random_depends_on_seed():
    a, b = mask_of("random(2, block=4, seed=1)", 64), mask_of("random(2, block=4, seed=2)", 64)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, mask_of("random(2, block=4, seed=1)", 64))


# ---------------------------------------------------------------- precedence and associativity

A = ("local(2)", lambda i, j: abs(i - j) <= 2)
B = ("stride(3)", lambda i, j: (i - j) % 3 == 0)
C = ("causal", lambda i, j: j <= i)

PRECEDENCE = [
    # (source, intended reading, a different reading the parser must not pick)
    ("{a} | {b} & {c}", lambda a, b, c: a or (b and c), lambda a, b, c: (a or b) and c),
    ("{c} & {b} | {a}", lambda a, b, c: (c and b) or a, lambda a, b, c: c and (b or a)),
    ("{a} - {b} & {c}", lambda a, b, c: a and not (b and c), lambda a, b, c: (a and not b) and c),
    ("{a} - {b} - {c}", lambda a, b, c: (a and not b) and not c, lambda a, b, c: a and not (b and not c)),
    ("{a} - {b} | {c}", lambda a, b, c: (a and not b) or c, lambda a, b, c: a and not (b or c)),
    ("{a} | {b} - {c}", lambda a, b, c: (a or b) and not c, lambda a, b, c: a or (b and not c)),
    ("{a} | {b} | {c}", lambda a, b, c: a or b or c, None),
    ("{a} & ({b} | {c})", lambda a, b, c: a and (b or c), lambda a, b, c: (a and b) or c),
]


@pytest.mark.parametrize("template,intended,other", PRECEDENCE, ids=[t for t, _, _ in PRECEDENCE])
def test_precedence_and_left_associativity(template, intended, other):
    src = template.format(a=A[0], b=B[0], c=C[0])
    n = 12

    def pred(f):
        return lambda i, j, n: f(A[1](i, j), B[1](i, j), C[1](i, j))

    want = brute(pred(intended), n)
    np.testing.assert_array_equal(mask_of(src, n), want, err_msg=src)
    if other is not None:  # the test can tell the two readings apart
        assert not np.array_equal(want, brute(pred(other), n))


# ---------------------------------------------------------------- user patterns and parameters

PROGRAM = """
# a window with global tokens; g defaults to half the window, s to sqrt(n)
pattern win(w, g = w // 2) = local(w) | global(g)
pattern strided(w = 4, s = isqrt(n)) = causal & (local(w) | stride(s))
pattern use_kw = win(g = 1, w = 3)
pattern use_pos = win(5)
pattern nested(k = 2) = win(k * 2, g = k) - block(k)
"""


def test_user_pattern_kwargs_and_defaults():
    prog = parse_program(PROGRAM, "prog.attn")
    n = 30
    kw = resolve(prog, "use_kw")
    np.testing.assert_array_equal(semantics.dense_mask_numpy(kw.at(n), n),
                                  brute(lambda i, j, n: abs(i - j) <= 3 or i < 1 or j < 1, n))
    pos = resolve(prog, "use_pos")  # g defaults to w // 2 = 2
    np.testing.assert_array_equal(semantics.dense_mask_numpy(pos.at(n), n),
                                  brute(lambda i, j, n: abs(i - j) <= 5 or i < 2 or j < 2, n))
    nested = resolve(prog, "nested", {"k": 3})
    assert nested.params == (("k", "3"),)
    np.testing.assert_array_equal(
        semantics.dense_mask_numpy(nested.at(n), n),
        brute(lambda i, j, n: (abs(i - j) <= 6 or i < 3 or j < 3) and i // 3 != j // 3, n))


def test_defaults_refer_to_earlier_params_and_n():
    prog = parse_program(PROGRAM, "prog.attn")
    p = resolve(prog, "strided")
    assert dict(p.params) == {"w": "4", "s": "isqrt(n)"}
    for n in (9, 50):
        s = math.isqrt(n)
        np.testing.assert_array_equal(semantics.dense_mask_numpy(p.at(n), n),
                                      brute(lambda i, j, n: j <= i and (i - j <= 4 or (i - j) % s == 0), n))
    q = resolve(prog, "win", {"w": 8})  # g follows w
    assert dict(q.params) == {"w": "8", "g": "4"}
    r = resolve(prog, "strided", {"s": 5})
    assert dict(r.params) == {"w": "4", "s": "5"}


def test_default_is_the_last_pattern_and_all_are_checked():
    prog = parse_program(PROGRAM, "prog.attn")
    assert resolve(prog).name == "nested"
    checked = [p.name for p in check_program(prog)]
    assert checked == ["strided", "use_kw", "use_pos", "nested"]  # win has a required parameter


@pytest.mark.parametrize("overrides,message", [
    ({"x": 1}, "has no parameter 'x'"),
    ({"k": "two"}, "parameter k must be an integer, got 'two' (str)"),  # the CLI parses -D text itself
    ({"k": 1.5}, "parameter k must be an integer, got 1.5 (float)"),
    ({"k": True}, "parameter k must be an integer, got True (bool)"),
    ({"k": 1 << 70}, "too large"),
    ({"k": -1}, "must be >= 0"),  # win(k * 2) is a negative window
])
def test_overrides_are_validated(overrides, message):
    prog = parse_program(PROGRAM, "prog.attn")
    with pytest.raises(PatternError) as e:
        resolve(prog, "nested", overrides)
    assert message in e.value.message


def test_per_head_ranges():
    src = "pattern p = heads { 0..1: causal, 2..2: local(1), 3..5: sink(2) | local(0) }"
    p = resolve_source(src)
    assert p.num_heads == 6
    n = 9
    want = {0: lambda i, j, n: j <= i, 1: lambda i, j, n: j <= i, 2: lambda i, j, n: abs(i - j) <= 1}
    for h in range(6):
        pred = want.get(h, lambda i, j, n: j < 2 or i == j)
        np.testing.assert_array_equal(mask_of(src, n, head=h), brute(pred, n), err_msg=f"head {h}")


def test_operators_distribute_over_heads():
    src = "pattern p = causal & heads { 0..1: local(2), 2..3: stride(3) } | sink(1)"
    p = resolve_source(src)
    assert isinstance(p.expr, ir.Heads) and p.num_heads == 4
    n = 10
    for h in range(4):
        inner = (lambda i, j: abs(i - j) <= 2) if h < 2 else (lambda i, j: (i - j) % 3 == 0)
        np.testing.assert_array_equal(mask_of(src, n, head=h),
                                      brute(lambda i, j, n: (j <= i and inner(i, j)) or j < 1, n))


def test_n_dependent_checks_run_at_length():
    p = resolve_source("local(n - 10)")
    assert p.checks, "a window that depends on n must be checked once n is known"
    p.at(10)
    with pytest.raises(PatternError) as e:
        p.at(9)
    assert "local window must be >= 0" in e.value.message and "n=9" in e.value.message


@pytest.mark.parametrize("src,message", [
    ("pattern a = casual", "did you mean 'causal'"),
    ("pattern a = local(3, dilatoin=2)", "did you mean 'dilation'"),
    ("pattern a(width=2) = local(widht)", "did you mean 'width'"),
    ("pattern a = local(sqrt(n))", "did you mean 'isqrt'"),
    ("pattern sliding = local(2)\npattern a = slidng", "did you mean 'sliding'"),
])
def test_did_you_mean(src, message):
    with pytest.raises(PatternError) as e:
        check_program(parse_program(src, "x.attn"))
    assert message in e.value.message
    assert e.value.span is not None


def test_required_parameter_placeholder_does_not_invent_errors():
    # checking `win` alone uses a placeholder for w; w - 1 = 0 must not be reported
    prog = parse_program("pattern win(w) = local(10 // (w - 1))\npattern a = win(3)\n", "x.attn")
    assert [p.name for p in check_program(prog)] == ["a"]
