"""Kills lose nothing (issue 15): ``identify`` killed mid-language (SIGKILL, and Ctrl-C = SIGINT) keeps
the finished languages; the rerun of the same command recomputes only the rest, and its mask has exactly
the bytes of an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _CORPUS

# runs the lapeval command with a hook on the decoder stack that sends itself KILL_SIG at forward KILL_AT
WRAPPER = """
import os, signal, sys
import lapeval.models as m
from lapeval.sites import stack_of
orig, at = m.load, int(os.environ.get("KILL_AT", "0"))
def load(*a, **k):
    net, tok = orig(*a, **k)
    n = [0]
    def pre(mod, args, kwargs):
        n[0] += 1
        if n[0] == at:
            os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIG"]))
    stack_of(net).register_forward_pre_hook(pre, with_kwargs=True)
    return net, tok
m.load = load
from lapeval import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _identify(cwd: Path, model: Path, out: str, kill_at: int = 0, sig: str = "SIGKILL"):
    env = {**os.environ, "KILL_AT": str(kill_at), "KILL_SIG": sig}
    argv = ["identify", "--model", str(model), "--languages", "en,fr", "--corpus", "files:corp/{lang}.txt",
            "--out", out, "--batch-size", "1", "--top-rate", "0.1", "--no-progress", "--device", "cpu"]
    return subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_identify_killed_mid_language_resumes_exactly(tmp_path, tiny_model_dir, sig):
    (tmp_path / "corp").mkdir()
    en = [s for s in _CORPUS[:9] if s.isascii()]
    (tmp_path / "corp" / "en.txt").write_text("\n".join(en * 2) + "\n")
    (tmp_path / "corp" / "fr.txt").write_text("\n".join(_CORPUS[1:9] * 2) + "\n")
    ref = _identify(tmp_path, tiny_model_dir, "ref/m.safetensors")
    assert ref.returncode == 0, ref.stderr
    n_en = 2 * len(en)  # batch size 1: one forward per English sequence, then French

    run = _identify(tmp_path, tiny_model_dir, "run/m.safetensors", kill_at=n_en + 3, sig=sig)
    if sig == "SIGKILL":
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == 130, run.stderr
        assert run.stderr.strip().splitlines()[-1] == ("lapeval identify: interrupted; rerun to resume "
                                                      "(finished work is kept)")
        assert "Traceback" not in run.stderr
    out = tmp_path / "run"
    assert not (out / "m.safetensors").exists() and not (out / "m.stats.safetensors").exists()
    assert [p.name for p in (out / "m.stats.safetensors.parts").iterdir()] == ["en.safetensors"]
    assert not [p for p in out.rglob(".*") if p.is_file()], "a temporary file was left"

    again = _identify(tmp_path, tiny_model_dir, "run/m.safetensors")
    assert again.returncode == 0, again.stderr
    assert "en already collected" in again.stdout and "fr already collected" not in again.stdout
    assert _sha(out / "m.safetensors") == _sha(tmp_path / "ref" / "m.safetensors")
    assert _sha(out / "m.stats.safetensors") == _sha(tmp_path / "ref" / "m.stats.safetensors")
    assert not (out / "m.stats.safetensors.parts").exists()


def test_changed_corpus_is_collected_again(tmp_path, tiny_model_dir):
    """The resume key holds what the text is (size, mtime), not only the corpus spec."""
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "en.txt").write_text("\n".join(_CORPUS[:1] * 4) + "\n")
    (tmp_path / "corp" / "fr.txt").write_text("\n".join(_CORPUS[1:2] * 4) + "\n")
    assert _identify(tmp_path, tiny_model_dir, "m.safetensors").returncode == 0
    same = _identify(tmp_path, tiny_model_dir, "m.safetensors")
    assert "already holds en, fr" in same.stdout
    (tmp_path / "corp" / "fr.txt").write_text("\n".join(_CORPUS[1:3] * 4) + "\n")
    changed = _identify(tmp_path, tiny_model_dir, "m.safetensors")
    assert changed.returncode == 0 and "already holds" not in changed.stdout
    assert "lapeval collect: fr:" in changed.stdout
