"""Bad input, unwritable outputs, degenerate input (issue 15): every case is one line on stderr naming the
problem, exit status 2, no traceback, and nothing left behind in the working folder. The commands run in
this process (``lapeval.cli.main``) from a scratch folder; no case loads a model: each must fail before."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, random_mask

MASK = ROOT / "neuron_masks" / "gemma-3-270m.safetensors"
GRID_CELLS = ROOT / "docs" / "grid-example" / "out" / "cells"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working folder with the inputs the cases read."""
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "en.jsonl").write_text('{"text": "hello"}\n{bad json\n')
    (tmp_path / "corp" / "de.jsonl").write_text('{"txt": "hallo"}\n')
    (tmp_path / "corp" / "fr.txt").write_bytes(b"bonjour\n\xff\xfe mauvais\n")
    (tmp_path / "corp" / "it.txt").write_text("ciao\n")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir.safetensors").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notmask.safetensors").write_text("plain text")
    meta = {"format": "lapeval.neuron_mask", "format_version": "1", "n_layers": "2", "d_ff": "4"}
    save_file({"en.layer": torch.zeros(1, dtype=torch.int64)}, str(tmp_path / "lacking.safetensors"),
              {**meta, "languages": json.dumps(["en"])})
    save_file({"en.layer": torch.zeros(1, dtype=torch.int64)}, str(tmp_path / "badjson.safetensors"),
              {**meta, "languages": "[en"})
    random_mask(tmp_path / "tiny.safetensors")
    n = torch.tensor([10, 10])
    save_file({"over_zero": torch.full((2, 2, 4), 11, dtype=torch.int64), "n_tokens": n},
              str(tmp_path / "over.stats.safetensors"), {"languages": json.dumps(["en", "fr"])})
    save_file({"over_zero": torch.full((2, 2, 4), 3, dtype=torch.int64), "n_tokens": n,
               "act_min": torch.zeros(2, 2, 4), "n_sentences": torch.tensor([0, 0])},
              str(tmp_path / "nosent.stats.safetensors"), {"languages": json.dumps(["en", "fr"])})
    save_file({"over_zero": torch.zeros(2, 2, 4, dtype=torch.int64), "n_tokens": n},
              str(tmp_path / "badmeta.stats.safetensors"), {"languages": json.dumps(["en", "fr"]), "lapeval": "{oops"})
    for name, body in {
        "g_iv.yaml": "interventions: 3", "g_tg.yaml": "targets: 5", "g_lim.yaml": 'limit: "ten"',
        "g_seed.yaml": 'seed: "abc"', "g_args.yaml": "model_args: [a, b]", "g_mux.yaml": "multiplex: maybe",
        "g_lay.yaml": "targets: [fr]\ninterventions: ['set:p_max@99']", "g_dev.yaml": "device: cuda:7",
        "g_unk.yaml": "modle: x", "g_self.yaml": "targets: [self]\ntasks: [lss_en]",
    }.items():
        (tmp_path / name).write_text(f"model: gemma-3-270m\ntasks: [flores_ppl_fr]\nneurons: {MASK}\n{body}\n")
    (tmp_path / "g_yaml.yaml").write_text("model: [unclosed\n")
    grid = tmp_path / "grid_corrupt"
    (grid / "cells" / "baseline").mkdir(parents=True)
    (grid / "grid.json").write_text(json.dumps({"cells": [{"id": "baseline", "folder": "baseline"}]}))
    (grid / "cells" / "baseline" / "results.json").write_text("{truncated")
    return tmp_path


CORPUS = "files:corp/{lang}"
ID = ["identify", "--model", "gemma-3-270m", "--no-progress"]
LSS = ["lss", "matrix", "--model", "gemma-3-270m", "--neurons", str(MASK)]
SF = ["search-factor", "--model", "gemma-3-270m", "--neurons", str(MASK), "--languages", "en,fr", "--facts", "builtin"]

# (id, argv, words the line must hold)
CASES = [
    # identify / collect / select: corpora, sizes, devices, outputs
    ("jsonl-broken-line", [*ID, "--languages", "en", "--corpus", CORPUS + ".jsonl", "--out", "o/m.safetensors"], ["corp/en.jsonl:2", "not JSON"]),
    ("jsonl-no-text", [*ID, "--languages", "de", "--corpus", CORPUS + ".jsonl", "--out", "o/m.safetensors"], ["corp/de.jsonl:1", "'text'"]),
    ("txt-not-utf8", [*ID, "--languages", "fr", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors"], ["corp/fr.txt:2", "UTF-8"]),
    ("corpus-lacks-language", [*ID, "--languages", "ja", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors"], ["no text for ja"]),
    ("corpus-unknown-kind", [*ID, "--languages", "it", "--corpus", "disk:corp", "--out", "o/m.safetensors"], ["unknown corpus source"]),
    ("corpus-missing-dir", [*ID, "--languages", "it", "--corpus", "flores:nowhere", "--out", "o/m.safetensors"], ["nowhere", "does not exist"]),
    ("out-not-safetensors", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.pt"], ["o/m.pt", ".safetensors"]),
    ("out-is-directory", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "outdir.safetensors"], ["outdir.safetensors", "EISDIR"]),
    ("out-under-a-file", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "afile/m.safetensors"], ["afile/m.safetensors", "ENOTDIR"]),
    ("stats-out-under-a-file", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors", "--stats-out", "afile/s.safetensors"], ["--stats-out", "afile"]),
    ("max-tokens-zero", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors", "--max-tokens", "0"], ["--max-tokens"]),
    ("n-sentences-negative", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors", "--n-sentences", "-1"], ["--n-sentences"]),
    ("language-activated-no-sentences", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors", "--method", "language-activated", "--n-sentences", "0"], ["--n-sentences > 0"]),
    ("top-rate-out-of-range", [*ID, "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors", "--top-rate", "2"], ["top_rate=2.0"]),
    ("device-cuda-without-cuda", ["collect", "--model", "gemma-3-270m", "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/s.safetensors", "--device", "cuda"], ["--device cuda", "cpu"]),
    ("device-nonsense", ["collect", "--model", "gemma-3-270m", "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/s.safetensors", "--device", "gpu0"], ["--device gpu0"]),
    ("dtype-unknown", ["collect", "--model", "gemma-3-270m", "--languages", "it", "--corpus", CORPUS + ".txt", "--out", "o/s.safetensors", "--dtype", "fp8"], ["fp8"]),
    ("language-unknown", [*ID, "--languages", "xx", "--corpus", CORPUS + ".txt", "--out", "o/m.safetensors"], ["xx"]),
    ("stats-missing", ["select", "--stats", "nope.safetensors", "--out", "o/m.safetensors"], ["nope.safetensors", "collect"]),
    ("stats-not-safetensors", ["select", "--stats", "bad.jsonl", "--out", "o/m.safetensors"], ["bad.jsonl"]),
    ("stats-over-zero-above-n", ["select", "--stats", "over.stats.safetensors", "--out", "o/m.safetensors"], ["over_zero", "n_tokens"]),
    ("stats-bad-metadata", ["select", "--stats", "badmeta.stats.safetensors", "--out", "o/m.safetensors"], ["badmeta.stats.safetensors", "metadata"]),
    ("select-language-activated-no-means", ["select", "--stats", "nosent.stats.safetensors", "--method", "language-activated", "--out", "o/m.safetensors"], ["--n-sentences > 0"]),
    ("select-out-is-directory", ["select", "--stats", "over.stats.safetensors", "--out", "outdir"], ["outdir"]),
    # masks
    ("mask-missing", ["masks", "show", "nope.safetensors"], ["nope.safetensors", "does not exist"]),
    ("mask-not-safetensors", ["masks", "show", "notmask.safetensors"], ["notmask.safetensors"]),
    ("mask-lacks-tensor", ["masks", "show", "lacking.safetensors"], ["lacking.safetensors", "en.neuron"]),
    ("mask-bad-languages-json", ["masks", "show", "badjson.safetensors"], ["badjson.safetensors", "metadata"]),
    ("masks-plot-out-directory", ["masks", "plot", "tiny.safetensors", "--out", "outdir"], ["outdir", "EISDIR"]),
    ("masks-export-under-file", ["masks", "export", "tiny.safetensors", "--out", "afile/x.pth"], ["afile/x.pth", "ENOTDIR"]),
    ("masks-import-missing", ["masks", "import", "nope.pth", "--format", "rucaibox", "--out", "o/m.safetensors"], ["nope.pth"]),
    # lss
    ("lss-score-not-jsonl", ["lss", "score", "--baseline", "bad.jsonl", "--intervened", "fr=bad.jsonl"], ["bad.jsonl", "line 1"]),
    ("lss-score-empty-logs", ["lss", "score", "--baseline", "empty.jsonl", "--intervened", "fr=empty.jsonl"], ["empty.jsonl", "no lss_* samples"]),
    ("lss-score-no-equals", ["lss", "score", "--baseline", "bad.jsonl", "--intervened", "bad.jsonl"], ["LANG=RUN"]),
    ("lss-score-wrong-language", ["lss", "score", "--baseline", str(GRID_CELLS / "baseline"), "--intervened", f"fr={GRID_CELLS / 'set=p_max__en'}"], ["amplified en, not fr"]),
    ("lss-score-baseline-intervened", ["lss", "score", "--baseline", str(GRID_CELLS / "set=p_max__en"), "--intervened", f"en={GRID_CELLS / 'set=p_max__en'}"], ["--baseline", "intervention"]),
    ("lss-source-without-facts", [*LSS, "--languages", "de,fr", "--facts", "builtin"], ["de", "facts"]),
    ("lss-source-not-on-hub", [*LSS, "--languages", "sw,fr"], ["sw"]),
    ("lss-offline-no-facts", [*LSS, "--languages", "en,fr"], ["--facts", "offline"]),
    ("lss-limit-zero", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--limit", "0"], ["--limit 0"]),
    ("lss-mode-unknown", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--mode", "explode"], ["explode"]),
    ("lss-layers-out-of-range", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--layers", "99"], ["99", "0..17"]),
    ("lss-target-not-in-mask", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--targets", "de"], ["de", "not in this mask"]),
    ("lss-out-under-file", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--out", "afile/m.json"], ["afile/m.json"]),
    ("lss-device-cuda", [*LSS, "--languages", "en,fr", "--facts", "builtin", "--device", "cuda"], ["--device cuda"]),
    ("lss-layers-out-not-json", ["lss", "layers", "--model", "gemma-3-270m", "--neurons", str(MASK), "--languages", "en,fr", "--facts", "builtin", "--out", "o/l.txt"], [".json"]),
    ("lss-facts-missing-dir", [*LSS, "--languages", "en,fr", "--facts", "nowhere"], ["--facts nowhere"]),
    # search-factor
    ("search-factor-out-under-file", [*SF, "--out", "afile/f.json"], ["afile/f.json"]),
    ("search-factor-bad-candidate", [*SF, "--candidates", "explode:3"], ["explode"]),
    # grid
    ("grid-interventions-int", ["grid", "g_iv.yaml", "--output", "o/g"], ["interventions: 3"]),
    ("grid-targets-int", ["grid", "g_tg.yaml", "--output", "o/g"], ["targets: 5"]),
    ("grid-limit-string", ["grid", "g_lim.yaml", "--output", "o/g"], ["limit: 'ten'"]),
    ("grid-seed-string", ["grid", "g_seed.yaml", "--output", "o/g"], ["seed: 'abc'"]),
    ("grid-model-args-list", ["grid", "g_args.yaml", "--output", "o/g"], ["model_args"]),
    ("grid-multiplex-bad", ["grid", "g_mux.yaml", "--output", "o/g"], ["multiplex"]),
    ("grid-layers-out-of-range", ["grid", "g_lay.yaml", "--output", "o/g"], ["99"]),
    ("grid-device-missing-gpu", ["grid", "g_dev.yaml", "--output", "o/g"], ["cuda:7"]),
    ("grid-unknown-key", ["grid", "g_unk.yaml", "--output", "o/g"], ["modle"]),
    ("grid-self-with-lss", ["grid", "g_self.yaml", "--output", "o/g"], ["self"]),
    ("grid-not-yaml", ["grid", "g_yaml.yaml", "--output", "o/g"], ["g_yaml.yaml", "YAML"]),
    ("grid-file-missing", ["grid", "nope.yaml", "--output", "o/g"], ["nope.yaml"]),
    ("grid-summary-corrupt-cell", ["grid", "--summary-only", "--output", "grid_corrupt"], ["baseline", "rerun"]),
    ("grid-summary-no-grid", ["grid", "--summary-only", "--output", "nowhere"], ["nowhere"]),
    # demo
    ("demo-n-eval-zero", ["demo", "--n-eval", "0", "--out", "o/demo"], ["--n-eval 0"]),
    ("demo-n-facts-negative", ["demo", "--n-facts", "-1", "--out", "o/demo"], ["--n-facts -1"]),
    ("demo-n-eval-too-large", ["demo", "--n-eval", "100000", "--out", "o/demo"], ["--n-eval 100000"]),
    ("demo-prompts-above-eval", ["demo", "--n-eval", "3", "--n-prompts", "5", "--out", "o/demo"], ["--n-prompts 5"]),
    ("demo-one-language", ["demo", "--languages", "en", "--out", "o/demo"], ["two"]),
    ("demo-out-is-file", ["demo", "--out", "afile"], ["afile"]),
    # eval
    ("eval-output-path-under-file", ["eval", "--model", "hf", "--model_args", "pretrained=gemma-3-270m", "--tasks", "flores_ppl_fr", "--output_path", "afile/res"], ["--output_path", "afile/res"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(scratch, capsys, monkeypatch, argv, words):
    import lapeval.models
    from lapeval import cli

    loads = []
    monkeypatch.setattr(lapeval.models, "load", lambda *a, **k: loads.append(a) or pytest.fail("a model loaded"))
    monkeypatch.setattr(lapeval.models, "resolve", lambda *a, **k: loads.append(a) or pytest.fail("a model resolved"))
    before = _files(scratch)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and "warning" not in l]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"lapeval {argv[0]}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert _files(scratch) == before, "stray files"
    assert not loads


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


# ---- full and read-only file systems ----------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs (root can mount one), else None."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fail_commit(monkeypatch, code):
    import lapeval._io as io

    def commit(tmp, path):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io, "_commit", commit)


def test_full_disk_then_rerun_after_freeing(tmp_path, small_fs, monkeypatch, capsys):
    """select onto a full disk: one line naming the path and ENOSPC, nothing under the final name, no temp
    file; after freeing space the same command writes the mask."""
    from lapeval import cli
    from lapeval.identification.stats import Stats

    stats = tmp_path / "s.stats.safetensors"
    Stats(["en", "fr"], torch.randint(0, 50, (2, 2, 48)), torch.tensor([100, 100])).save(stats)
    where = small_fs or tmp_path / "full"
    where.mkdir(exist_ok=True)
    filler = where / "filler"
    if small_fs is not None:
        with open(filler, "wb") as fh:  # fill it
            try:
                fh.write(b"\0" * (1 << 20))
            except OSError:
                pass
    else:
        _fail_commit(monkeypatch, errno.ENOSPC)
    out = where / "m.safetensors"
    argv = ["select", "--stats", str(stats), "--top-rate", "0.2", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "ENOSPC" in err[0], err
    assert sorted(p.name for p in where.iterdir()) == (["filler"] if small_fs is not None else [])
    if small_fs is not None:
        filler.unlink()
    else:
        monkeypatch.undo()
    assert cli.main(argv) == 0
    assert out.is_file()


def test_read_only_output(tmp_path, small_fs, monkeypatch, capsys):
    from lapeval import cli

    mask = random_mask(tmp_path / "m.safetensors")
    if small_fs is not None:
        assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)]).returncode == 0
        out = small_fs / "x.pth"
    else:
        _fail_commit(monkeypatch, errno.EROFS)
        out = tmp_path / "ro" / "x.pth"
    assert cli.main(["masks", "export", str(mask), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "EROFS" in err[0] and "read-only" in err[0], err
    assert not out.exists() and not out.parent.exists() if small_fs is None else not out.exists()


def test_stale_temp_of_a_killed_writer_is_swept(tmp_path):
    """A temporary file left by a SIGKILLed process (its pid gone) is removed by the next write."""
    import socket

    from lapeval._io import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.json.{socket.gethostname()}-{dead.stdout.strip()}.abc123.json"
    stale.write_text("{half")
    write_text(tmp_path / "a.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ---- degenerate input that is used, with a warning ----------------------------------------------------
def test_short_corpus_warns_in_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from lapeval import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "en.txt").write_text("The cat sat on the mat.\n")
    rc = cli.main(["collect", "--model", str(tiny_model_dir), "--languages", "en", "--corpus", "files:{lang}.txt",
                   "--max-tokens", "300", "--out", "s.safetensors", "--no-progress", "--device", "cpu"])
    assert rc == 0
    warn = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert any(l.startswith("lapeval collect: warning: en: the corpus holds only") and "--max-tokens 300" in l
               for l in warn), warn


# ---- pipes and Ctrl-C ----------------------------------------------------------------------------------
def test_broken_pipe_is_quiet():
    """``lapeval masks show M | head -1``: no BrokenPipeError traceback."""
    res = subprocess.run(f"{sys.executable} -m lapeval masks show {MASK} | head -1", shell=True, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.stdout.strip() == str(MASK)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_ctrl_c_is_one_line_exit_130(tmp_path):
    code = ("import signal, sys, lapeval.masks as m\n"
            "def boom(*a, **k):\n    signal.raise_signal(signal.SIGINT)\n"
            "m.NeuronMask.load = boom\nfrom lapeval import cli\nsys.exit(cli.main(['masks', 'show', 'x']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 130
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines == ["lapeval masks: interrupted; rerun to resume (finished work is kept)"], res.stderr


# ---- found too late: a mask that does not fit the model fails before its first forward ---------------
@pytest.fixture
def forwards(monkeypatch):
    """Counts forwards of every model the lape model loads (hooked where it finds the FFN sites)."""
    import lapeval.lm
    from lapeval.sites import stack_of

    calls = []
    real = lapeval.lm.find_sites

    def counting(model, *a, **k):
        stack_of(model).register_forward_pre_hook(lambda *_: calls.append(1))
        return real(model, *a, **k)

    monkeypatch.setattr(lapeval.lm, "find_sites", counting)
    return calls


@pytest.mark.parametrize("cmd", ["lss-matrix", "lss-layers", "search-factor", "grid", "lape-model"])
def test_mask_for_another_model_fails_before_any_forward(cmd, tmp_path, tiny_model_dir, forwards, capsys, monkeypatch):
    """The Gemma-3-270m mask (18 × 2048) against the tiny model (2 × 48): one line, and not one forward
    (before the baseline, the first grid cell, the first factor)."""
    from lapeval import cli
    from lapeval.taskdata import FACTS_DIR

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAPEVAL_MLAMA_DIR", str(FACTS_DIR))
    common = ["--model", str(tiny_model_dir), "--neurons", str(MASK), "--languages", "en,fr", "--facts", "builtin",
              "--limit", "2"]
    if cmd == "lape-model":
        from lapeval.errors import LapevalError
        from lapeval.lm import LapeLM

        with pytest.raises(LapevalError) as e:
            LapeLM(pretrained=str(tiny_model_dir), neurons=str(MASK), lang="fr", mode="set", value="p_max",
                   device="cpu")
        line = str(e.value)
    else:
        if cmd == "grid":
            (tmp_path / "g.yaml").write_text(json.dumps({
                "model": str(tiny_model_dir), "neurons": str(MASK), "tasks": ["lss_en"], "targets": ["fr"],
                "interventions": ["set:p_max"], "limit": 2, "device": "cpu", "facts": "builtin", "output": "g"}))
            argv = ["grid", "g.yaml"]
        else:
            argv = {"lss-matrix": ["lss", "matrix", *common], "lss-layers": ["lss", "layers", *common],
                    "search-factor": ["search-factor", *common, "--out", "f.json"]}[cmd]
        assert cli.main(argv) == 2
        text = capsys.readouterr().err  # the model loaded: its progress bars come first
        err = [l for l in text.splitlines() if l.startswith("lapeval ")]
        assert len(err) == 1 and err[0].startswith(f"lapeval {argv[0]}: error: ") and "Traceback" not in text, text
        line = err[0]
    assert "18 layers × 2048" in line and "2 × 48" in line and "\n" not in line, line
    assert forwards == [], f"{len(forwards)} forward(s) before the error"


@pytest.mark.parametrize("saves", [False, True])
def test_eval_fails_when_lm_eval_saved_nothing(tmp_path, monkeypatch, capsys, saves):
    """lm-eval only warns when it cannot save its results and exits 0; ``lapeval eval`` then exits 2 so a CI
    job cannot pass with nothing written. (lm-eval itself is replaced by a stand-in that saves or not.)"""
    import lm_eval.__main__

    from lapeval import cli

    out = tmp_path / "res"

    def fake_evaluate():
        if saves:
            (out / "m").mkdir(parents=True)
            (out / "m" / "results_2026-12-03T00-00-00.json").write_text("{}")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake_evaluate)
    rc = cli.main(["eval", "--model", "hf", "--tasks", "lapeval_xcopa_id", "--output_path", str(out)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    if saves:
        assert rc == 0, err
    else:
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("lapeval eval: error: lm-eval could not save its results under --output_path")


# ---- issue 24: NaN, corrupt and hostile mask files, reference files to import (rows 3, 4, 8) ------------------
def _corrupt_mask(path: Path, tensors: dict | None = None, **header) -> None:
    from safetensors.torch import save_file

    good = {"en.layer": torch.tensor([0, 1]), "en.neuron": torch.tensor([3, 0]), "en.p_max": torch.tensor([1.0, 2.0]),
            "en.p_median": torch.tensor([0.5, 0.25])}
    meta = {"format": "lapeval.neuron_mask", "format_version": "1", "languages": '["en"]', "n_layers": "2", "d_ff": "4"}
    save_file({**good, **(tensors or {})}, str(path), {**meta, **header})


@pytest.fixture
def hostile(scratch):
    """``scratch`` plus broken mask files and reference files."""
    m = {
        "nan": ({"en.p_max": torch.tensor([1.0, float("nan")])}, {}),
        "inf": ({"en.p_median": torch.tensor([0.5, float("inf")])}, {}),
        "huge": ({}, {"d_ff": str(10**15)}),
        "negative": ({}, {"n_layers": "-2"}),
        "strobj": ({}, {"lapeval": json.dumps({"site": "model.layers"})}),
        "twod": ({"en.layer": torch.tensor([[0, 1]]), "en.neuron": torch.tensor([[3, 0]])}, {}),
        "twice": ({}, {"languages": '["en", "en"]'}),
    }
    for name, (tensors, header) in m.items():
        _corrupt_mask(scratch / f"{name}.safetensors", tensors, **header)
    refs = {"neg": [[torch.tensor([0]), torch.tensor([-1, 2])]], "frac": [[torch.tensor([1.7])]],
            "twodidx": [[torch.tensor([[1, 2], [3, 4]])]], "nolayers": [[]], "list": [[[1, 2, 3]]],
            "tb": [[torch.tensor([0, 10**12])]]}
    for name, obj in refs.items():
        torch.save(obj, scratch / f"{name}.pth")
    torch.save([[torch.tensor([0, 5])]], scratch / "lape.pth")
    torch.save(torch.zeros(1).expand(1, 1, 10**12), scratch / "tb.max.pt")  # claims 4 TB, 1.5 KB on disk
    return scratch


IMPORT = ["masks", "import", "--format", "rucaibox", "--languages", "en", "--out", "o/m.safetensors"]
CORRUPT = "corrupt mask"
HOSTILE_CASES = [
    ("mask-nan-p-max", ["masks", "show", "nan.safetensors"], ["nan.safetensors", CORRUPT, "en.p_max", "NaN"]),
    ("mask-inf-p-median", ["masks", "show", "inf.safetensors"], ["inf.safetensors", CORRUPT, "en.p_median"]),
    ("lss-nan-mask", ["lss", "matrix", "--model", "gemma-3-270m", "--neurons", "nan.safetensors", "--languages", "en,fr",
                      "--facts", "builtin"], ["nan.safetensors", CORRUPT, "NaN"]),
    ("mask-huge-shape", ["masks", "show", "huge.safetensors"], ["huge.safetensors", CORRUPT, str(10**15)]),
    ("mask-negative-shape", ["masks", "show", "negative.safetensors"], [CORRUPT, "-2 layers"]),
    ("mask-string-for-object", ["masks", "show", "strobj.safetensors"], [CORRUPT, "'site'"]),
    ("mask-2d-tensors", ["masks", "show", "twod.safetensors"], [CORRUPT, "en.layer", "2-D"]),
    ("mask-language-twice", ["masks", "show", "twice.safetensors"], [CORRUPT, "en twice"]),
    ("mask-export-nan", ["masks", "export", "nan.safetensors", "--out", "o/x.pth"], [CORRUPT, "NaN"]),
    ("import-index-negative", [*IMPORT[:2], "neg.pth", *IMPORT[2:]], [CORRUPT, "en, layer 1", "-1"]),
    ("import-index-fraction", [*IMPORT[:2], "frac.pth", *IMPORT[2:]], [CORRUPT, "en, layer 0", "1.7"]),
    ("import-index-2d", [*IMPORT[:2], "twodidx.pth", *IMPORT[2:]], [CORRUPT, "en, layer 0", "2-D"]),
    ("import-no-layers", [*IMPORT[:2], "nolayers.pth", *IMPORT[2:]], [CORRUPT, "en has no layers"]),
    ("import-list-not-tensors", [*IMPORT[:2], "list.pth", *IMPORT[2:]], [CORRUPT, "en, layer 0", "list"]),
    ("import-index-1tb", [*IMPORT[:2], "tb.pth", *IMPORT[2:]], [CORRUPT, "1000000000001 FFN neurons"]),
    ("import-values-1tb", ["masks", "import", "lape.pth", "--format", "lang-task-neuron", "--languages", "en",
                           "--p-max", "tb.max.pt", "--out", "o/m.safetensors"], [CORRUPT, "1000000000000 FFN neurons"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in HOSTILE_CASES], ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_masks_are_one_line_exit_2(hostile, capsys, monkeypatch, argv, words):
    test_bad_input_is_one_line_exit_2(hostile, capsys, monkeypatch, argv, words)
