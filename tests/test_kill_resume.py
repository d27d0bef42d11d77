"""Kills lose nothing (issue 15): ``identify`` killed mid-language and ``grid`` killed mid-cell (SIGKILL, and
Ctrl-C = SIGINT) keep the finished work; the rerun of the same command recomputes only the rest, and its mask
has exactly the bytes, its summary exactly the numbers, of an uninterrupted run's. ``select`` run twice on
the same statistics writes the same bytes, so a grid keyed by the mask's sha256 reuses every cell."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _CORPUS, random_mask

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


def _identify(cwd: Path, model: Path, out: str, kill_at: int = 0, sig: str = "SIGKILL", langs: str = "en,fr"):
    env = {**os.environ, "KILL_AT": str(kill_at), "KILL_SIG": sig}
    argv = ["identify", "--model", str(model), "--languages", langs, "--corpus", "files:corp/{lang}.txt",
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


# ---- grid ---------------------------------------------------------------------------------------------
# runs ``lapeval grid`` and sends itself KILL_SIG at the first model forward after KILL_AFTER cells have
# finished (their results.json written): the kill lands inside the next cell's evaluation
GRID_WRAPPER = """
import os, signal, sys
from pathlib import Path
import lapeval.lm as L
from lapeval.sites import stack_of
after = int(os.environ.get("KILL_AFTER", "-1"))
cells = Path(os.environ["GRID_OUT"]) / "cells"
init = L.LapeLM.__init__
def pre(mod, args, kwargs):
    if after >= 0 and len(list(cells.glob("*/results.json"))) >= after:
        os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIG"]))
def new_init(self, *a, **k):
    init(self, *a, **k)
    stack_of(self.model).register_forward_pre_hook(pre, with_kwargs=True)
L.LapeLM.__init__ = new_init
from lapeval import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _grid_yaml(tmp_path: Path, model: Path, mask: Path, out: str) -> Path:
    import yaml

    cfg = tmp_path / f"{out}.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(model), "neurons": str(mask), "tasks": ["lss_en", "lss_fr"], "targets": ["en", "fr"],
        "interventions": ["zero", "set:p_max"], "limit": 3, "batch_size": 2, "device": "cpu", "facts": "builtin",
        "bootstrap_iters": 0, "ci_resamples": 100, "output": str(tmp_path / out)}))
    return cfg


def _grid(tmp_path: Path, cfg: Path, out: str, kill_after: int = -1, sig: str = "SIGKILL"):
    from lapeval.taskdata import FACTS_DIR

    env = {**os.environ, "KILL_AFTER": str(kill_after), "KILL_SIG": sig, "GRID_OUT": str(tmp_path / out),
           "LAPEVAL_MLAMA_DIR": str(FACTS_DIR), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", GRID_WRAPPER, "grid", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    s["config"].pop("output")
    return s


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_grid_killed_mid_cell_resumes_exactly(tmp_path, tiny_model_dir, sig):
    mask = random_mask(tmp_path / "m.safetensors", per_lang=16, p_max_low=2.0, p_max_span=6.0)
    ref = _grid(tmp_path, _grid_yaml(tmp_path, tiny_model_dir, mask, "ref"), "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "(5 cell(s) run, 0 reused)" in ref.stdout

    cfg = _grid_yaml(tmp_path, tiny_model_dir, mask, "run")
    run = _grid(tmp_path, cfg, "run", kill_after=2, sig=sig)
    if sig == "SIGKILL":
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == 130, run.stderr[-3000:]
        # (lm-eval's progress bar may redraw after it, on the same terminal line)
        assert ("lapeval grid: interrupted; rerun to resume (finished work is kept)"
                in [l.strip() for l in run.stderr.splitlines()]), run.stderr[-3000:]
        assert "Traceback" not in run.stderr
    out = tmp_path / "run"
    assert len(list((out / "cells").glob("*/results.json"))) == 2  # two cells finished, the third cut short
    assert not (out / "summary.json").exists()
    assert not [p for p in out.rglob(".*") if p.is_file()], "a temporary file was left"

    again = _grid(tmp_path, cfg, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "grid: 2 finished cell(s) reused, 3 to run" in again.stderr
    assert "(3 cell(s) run, 2 reused)" in again.stdout
    assert _summary(out) == _summary(tmp_path / "ref")
    for ref_cell in (tmp_path / "ref" / "cells").iterdir():  # every sample row as the uninterrupted run's
        for f in ref_cell.glob("samples_*.jsonl"):
            assert (out / "cells" / ref_cell.name / f.name).read_bytes() == f.read_bytes()


def test_select_twice_same_bytes_and_the_grid_reuses_every_cell(tmp_path, tiny_model_dir, capsys):
    from lapeval.cli import main

    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "en.txt").write_text("\n".join([s for s in _CORPUS[:9] if s.isascii()] * 2) + "\n")
    (tmp_path / "corp" / "fr.txt").write_text("\n".join(_CORPUS[1:9] * 2) + "\n")
    (tmp_path / "corp" / "ja.txt").write_text("\n".join(_CORPUS[5:12] * 2) + "\n")
    r = _identify(tmp_path, tiny_model_dir, "id/m.safetensors", langs="en,fr,ja")
    assert r.returncode == 0, r.stderr
    stats = tmp_path / "id" / "m.stats.safetensors"
    sel = ["select", "--stats", str(stats), "--top-rate", "0.1"]
    assert main([*sel, "--out", str(tmp_path / "a.safetensors")]) == 0
    first = _sha(tmp_path / "a.safetensors")
    assert main([*sel, "--out", str(tmp_path / "b.safetensors")]) == 0
    assert _sha(tmp_path / "b.safetensors") == first
    assert _sha(tmp_path / "id" / "m.safetensors") == first  # identify = collect + select: the same file

    cfg = _grid_yaml(tmp_path, tiny_model_dir, tmp_path / "a.safetensors", "g")
    assert _grid(tmp_path, cfg, "g").returncode == 0
    assert main([*sel, "--out", str(tmp_path / "a.safetensors")]) == 0  # select again over the grid's mask
    assert _sha(tmp_path / "a.safetensors") == first
    capsys.readouterr()
    again = _grid(tmp_path, cfg, "g")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(0 cell(s) run, 5 reused)" in again.stdout
