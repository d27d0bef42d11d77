"""The one safe-name function (issue 24 row 1): any task, model, metric or label text becomes one path
component that stays inside its folder, distinct names stay distinct; and ``inside`` refuses paths that
leave their output folder. Also ``printable`` / ``dumps_printable`` (row 7)."""

from __future__ import annotations

import itertools
import json
import os
import random

import pytest

from lapeval._io import UnsafePathError, dumps_printable, inside, printable, safe_name
from lapeval.errors import LapevalError

HOSTILE = [
    "t/../../../../tmp/x", "..", ".", "", "/", "//", "\\", "..\\..\\x", "../x", "./x", "x/..", "x/.", ".hidden",
    "...", ". .", "a" * 500, "é" * 300, "日本語" * 100, "a\x00b", "a\nb", "a\rb", "a\tb", "\x1b[2J\x1b]0;pwn\x07",
    "\x9b31m", "evil\u202etxt.exe", "zero\u200bwidth", "line\u2028sep", "\ud800lone", "tag\U000e0041",
    "CON", "a:b", "a*b?c", 'a"b<c>d|e', "a b", " ", "~", "x~0123456789ab", "x~0123456789abc", "set=p_max__fr",
    "flores_ppl_fr", "lss_en", "gemma-3-270m", "meta-llama/Llama-2-7b-hf", "samples_t/../../x", "-rf", "emoji 🙂",
    "\x00", "\x7f", "a" * 100, "a" * 101, "é" * 50, "é" * 51,
]


def _one_component(name: str, max_len: int = 100) -> None:
    assert name and name not in (".", "..") and not name.startswith("."), repr(name)
    assert "/" not in name and "\\" not in name and os.sep not in name, repr(name)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in name), repr(name)
    assert len(name.encode("utf-8")) <= max_len, (len(name.encode("utf-8")), name)
    assert printable(name) == name, repr(name)  # nothing a terminal would obey


def _random_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = ["/", "\\", ".", "..", "~", ":", "_", "-", "=", "a", "b", "é", "日", "🙂", "\x00", "\n", "\x1b",
                "\u202e", " ", "0", "f", "x"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("max_len", [20, 64, 100, 255])
def test_every_hostile_name_is_one_bounded_component(max_len):
    for text in HOSTILE + _random_names(400):
        _one_component(safe_name(text, max_len), max_len)


def test_distinct_inputs_give_distinct_outputs():
    texts = list(dict.fromkeys(HOSTILE + _random_names(2000, seed=1)))
    # names that differ only where the cleaning replaces characters, or beyond the cut
    texts += ["a/b", "a\\b", "a_b", "a:b", "a\nb", "a\x00b", ".b", "_b", "..", "__", ".", "_"]
    texts += ["p" * 200 + "1", "p" * 200 + "2", "p" * 99, "p" * 100, "p" * 101]
    texts += [safe_name(t) for t in texts]  # outputs fed back in are names too
    texts = list(dict.fromkeys(texts))
    outs = {}
    for t in texts:
        out = safe_name(t)
        assert outs.setdefault(out, t) == t, (t, outs.get(out), out)


def test_safe_names_are_kept_and_everything_is_deterministic():
    for name in ["set=p_max__fr", "flores_ppl_fr", "lss_en", "gemma-3-270m", "xcopa_id", "acc,none", "日本語タスク",
                 "a b", "scale=2@en~zero@fr", "results.json"]:
        assert safe_name(name) == name
    for text in HOSTILE:
        assert safe_name(text) == safe_name(text)
    # the hash is of the text itself: stable across runs and processes (no salted hash())
    assert safe_name("..") == "__~5ec1f7e700f3"
    assert safe_name("") == "_~e3b0c44298fc"


def test_long_names_keep_a_readable_prefix():
    name = "lss_" + "x" * 600
    out = safe_name(name)
    assert out.startswith("lss_xxxx") and len(out) == 100 and "~" in out
    cut = safe_name("é" * 300, max_len=64)  # cut on a character boundary, counted in bytes
    assert len(cut.encode("utf-8")) <= 64 and cut.startswith("ééé")
    traversal = safe_name("t/../../../../tmp/x")
    assert traversal.startswith("t_.._.._") and "/" not in traversal


def test_joined_under_a_folder_it_stays_inside(tmp_path):
    for text, prefix, suffix in itertools.product(HOSTILE[:30], ["", "samples_"], ["", ".jsonl"]):
        p = tmp_path / f"{prefix}{safe_name(text)}{suffix}"
        assert p.parent == tmp_path and inside(tmp_path, p) == p.resolve()


def test_max_len_too_small_is_refused():
    with pytest.raises(ValueError, match="max_len=10"):
        safe_name("x", 10)


# ---- inside ----------------------------------------------------------------------------------------------
def test_inside_accepts_paths_below_the_root(tmp_path):
    assert inside(tmp_path, "cells/baseline") == (tmp_path / "cells" / "baseline").resolve()
    assert inside(tmp_path, tmp_path / "a" / ".." / "b") == (tmp_path / "b").resolve()
    assert inside(tmp_path, ".") == tmp_path.resolve()
    assert inside(str(tmp_path), "x.json") == (tmp_path / "x.json").resolve()


@pytest.mark.parametrize("path", ["..", "../x", "cells/../../x", "/tmp/x", "/", "a/../../b", "\x1b[2J/../../.."])
def test_inside_refuses_paths_that_leave_the_root(tmp_path, path):
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(UnsafePathError) as e:
        inside(root, path, what="cell folder")
    msg = str(e.value)
    assert isinstance(e.value, LapevalError) and isinstance(e.value, ValueError)
    assert "\n" not in msg and "\x1b" not in msg and msg.startswith("cell folder ") and str(root) in msg


def test_inside_follows_symlinks(tmp_path):
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        inside(root, "link/x.json")
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner")
    assert inside(root, "ok/x") == (root / "inner" / "x").resolve()
    try:
        got = inside(root, "loop/x")
    except UnsafePathError as e:  # Python < 3.13: RuntimeError on the loop, turned into one line
        assert "\n" not in str(e)
    else:
        assert got.is_relative_to(root.resolve())


# ---- printable / dumps_printable ----------------------------------------------------------------------
def test_printable_escapes_only_control_characters():
    assert printable("plain ascii, 日本語, é, 🙂") == "plain ascii, 日本語, é, 🙂"
    assert printable("\x1b[2J\x1b]0;title\x07") == "\\x1b[2J\\x1b]0;title\\x07"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x9b31m \u202eevil \u200b \x7f") == "\\x9b31m \\u202eevil \\u200b \\x7f"
    assert printable(3) == "3"


def test_dumps_printable_is_the_same_json_safe_on_a_terminal():
    obj = {"corpus": "x\x1b]52;c;AAAA\x07\x9b2J\u202e", "n": [1, 2], "日本": "é"}
    text = dumps_printable(obj, indent=1)
    assert json.loads(text) == obj
    assert printable(text.replace("\n", " ")) == text.replace("\n", " ")  # only indentation newlines remain raw
