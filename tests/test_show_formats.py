"""`patternc show -o FILE` writes the format its extension names, or refuses it clearly."""
from __future__ import annotations

import importlib.util

import pytest

from patternc import show

PATTERN = "pattern p(w = 8) = causal & local(w) | global(2)\n"

MAGIC = {  # the first bytes of each format
    "png": [b"\x89PNG\r\n\x1a\n"],
    "svg": [b"<?xml", b"<svg"],
    "svgz": [b"\x1f\x8b"],
    "pdf": [b"%PDF-"],
    "eps": [b"%!PS-Adobe-3.0 EPSF"],
    "ps": [b"%!PS-Adobe"],
    "jpg": [b"\xff\xd8\xff"],
    "jpeg": [b"\xff\xd8\xff"],
    "tif": [b"II*\x00", b"MM\x00*"],
    "tiff": [b"II*\x00", b"MM\x00*"],
    "webp": [b"RIFF"],
}
HAS_PILLOW = importlib.util.find_spec("PIL") is not None


@pytest.fixture
def attn(tmp_path):
    f = tmp_path / "p.attn"
    f.write_text(PATTERN)
    return f


@pytest.mark.parametrize("ext", sorted(MAGIC))
def test_the_extension_picks_the_format(cli, attn, tmp_path, ext):
    if show.PICTURE_FORMATS[ext] in show.NEEDS_PILLOW and not HAS_PILLOW:
        pytest.skip("pillow is not installed")
    out = tmp_path / f"mask.{ext.upper() if ext == 'pdf' else ext}"  # the extension's case does not matter
    r = cli("show", attn, "--n", 96, "--tile", 16, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # e.g. no PostScript transparency warnings
    data = out.read_bytes()
    assert any(data.startswith(m) for m in MAGIC[ext]), (ext, data[:16])
    if ext == "webp":
        assert data[8:12] == b"WEBP"
    if ext == "svg":
        assert b"<svg" in data[:400]
    assert f"{out}: {show.PICTURE_FORMATS[ext].upper()} picture of pattern 'p' at n=96" in r.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("name,what", [("mask.gif", "unknown picture format '.gif'"),
                                       ("mask.txt", "unknown picture format '.txt'"),
                                       ("mask", "no file extension to pick the picture format")])
def test_unknown_or_missing_extensions_are_refused(cli, attn, tmp_path, name, what):
    out = tmp_path / name
    r = cli("show", attn, "--n", 96, "-o", out)
    assert r.returncode == 1 and not out.exists()
    line, = r.stderr.strip().splitlines()
    assert line == f"{out}: {what}; use one of: .png, .svg, .svgz, .pdf, .eps, .ps, .jpg, .jpeg, .tif, .tiff, .webp"


def test_formats_that_need_pillow_are_refused_without_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL" else real(name, *a))
    with pytest.raises(ValueError, match=r"writing \.jpg needs pillow \(pip install pillow\)"):
        show.picture_format("x.jpg")
    assert show.picture_format("x.svg") == "svg" and show.picture_format("x.PNG") == "png"
