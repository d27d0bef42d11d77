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
    real = lapeval.lm.find_neuron_sites

    def counting(model, *a, **k):
        stack_of(model).register_forward_pre_hook(lambda *_: calls.append(1))
        return real(model, *a, **k)

    monkeypatch.setattr(lapeval.lm, "find_neuron_sites", counting)
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


# ---- issue 24: hostile names, facts folders, output folders and a second grid (rows 1, 2, 5, 6, 9-15) ---------
LOCK_HOLDER = """import fcntl, json, os, sys, time
fh = open(sys.argv[1], "a+")
fh.truncate(0)
fh.write(json.dumps({"grid": "another", "host": "elsewhere", "pid": os.getpid()}) + "\\n")
fh.flush()
fcntl.flock(fh, fcntl.LOCK_SH)  # as a running grid holds it
print("ready", flush=True)
time.sleep(600)
"""


def _facts(folder: Path, en_text: str) -> None:
    from lapeval.paths import FACTS_DIR

    for lang in ("en", "fr"):
        (folder / lang).mkdir(parents=True)
        (folder / lang / "test.jsonl").write_text((FACTS_DIR / lang / "test.jsonl").read_text(encoding="utf-8"))
    (folder / "en" / "test.jsonl").write_text(en_text, encoding="utf-8")


def _fact_rows(n: int = 4) -> list[dict]:
    from lapeval.paths import FACTS_DIR

    return [json.loads(l) for l in (FACTS_DIR / "en" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def outputs(scratch):
    """``scratch`` plus grid files with hostile names, broken facts folders, grid folders whose heatmaps cannot
    be written or whose grid.json points outside, and a folder held by another running grid."""
    ok = f"model: gemma-3-270m\nneurons: {MASK}\ntargets: [fr]\ntasks: [lss_en]\nfacts: builtin\n"
    (scratch / "g_ok.yaml").write_text(ok)
    (scratch / "g_name.yaml").write_text(ok + "name: '=cmd|x'\n")
    (scratch / "g_mname.yaml").write_text("models: [{name: '@x', pretrained: gemma-3-270m}]\ntasks: [lss_en]\n")
    (scratch / "g_mlong.yaml").write_text(f"models: [{{name: {'m' * 300}, pretrained: gemma-3-270m}}]\ntasks: [lss_en]\n")
    rows = _fact_rows()
    del rows[1]["sub_en"]
    _facts(scratch / "f_nosub", _jsonl(rows))
    _facts(scratch / "f_empty", "")
    _facts(scratch / "f_badjson", _jsonl(_fact_rows()[:2]) + "{not json\n")
    for name in ("hm_file", "hm_link", "tampered", "locked"):
        (scratch / name).mkdir()
        (scratch / name / "grid.json").write_text(json.dumps({"config": {}, "cells": [{"id": "baseline", "folder": "baseline"}]}))
    (scratch / "hm_file" / "heatmaps").write_text("not a folder")
    (scratch / "hm_link" / "heatmaps").symlink_to(scratch / "nowhere")
    (scratch / "tampered" / "grid.json").write_text(json.dumps({"config": {}, "cells": [
        {"id": "baseline", "folder": "../../outside/x"}]}))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(scratch / "locked" / "grid.lock")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    try:
        yield scratch
    finally:
        holder.kill()
        holder.wait()


FACTS = [*LSS, "--languages", "en,fr", "--facts"]
OUTPUT_CASES = [
    ("grid-name-formula", ["grid", "g_name.yaml", "--output", "o/g"], ["name '=cmd|x'", "letters, digits and . _ -"]),  # row 5
    ("grid-models-name-at", ["grid", "g_mname.yaml", "--output", "o/g"], ["models[0]", "'@x'", "letters, digits"]),  # row 5
    ("grid-models-name-too-long", ["grid", "g_mlong.yaml", "--output", "o/g"], ["models[0]", "300 characters"]),  # row 13
    ("grid-model-too-long", ["grid", "--model", "m" * 300, "--tasks", "lss_en", "--facts", "builtin", "--output", "o/g"],
     ["model:", "300 characters", "hub id"]),  # row 13
    ("grid-unknown-task", ["grid", "g_ok.yaml", "--tasks", "lss_en,no_such_task", "--output", "o/g"],
     ["unknown task(s) no_such_task"]),  # row 13: no grid.json left behind
    ("grid-heatmaps-is-a-file", ["grid", "g_ok.yaml", "--output", "hm_file"], ["hm_file/heatmaps", "a file"]),  # row 11
    ("grid-summary-heatmaps-is-a-file", ["grid", "--summary-only", "--output", "hm_file"], ["hm_file/heatmaps", "a file"]),
    ("grid-summary-heatmaps-dangling", ["grid", "--summary-only", "--output", "hm_link"], ["hm_link/heatmaps", "symbolic link"]),
    ("grid-summary-folder-outside", ["grid", "--summary-only", "--output", "tampered"],  # row 15
     ["cell 'baseline'", "../../outside/x", "outside the output folder"]),
    ("grid-another-grid-running", ["grid", "g_ok.yaml", "--output", "locked"], ["another grid is running in locked"]),  # row 6
    ("lss-facts-row-without-sub", [*FACTS, "f_nosub"], ["f_nosub/en/test.jsonl line 2", "'sub_en'"]),  # row 9
    ("lss-facts-empty-file", [*FACTS, "f_empty"], ["f_empty/en/test.jsonl", "empty"]),
    ("lss-facts-not-json", [*FACTS, "f_badjson"], ["f_badjson/en/test.jsonl line 3", "not JSON"]),
    ("grid-facts-not-json", ["grid", "g_ok.yaml", "--facts", "f_badjson", "--output", "o/g"], ["f_badjson/en/test.jsonl line 3"]),
    ("search-factor-facts-no-sub", ["search-factor", "--model", "gemma-3-270m", "--neurons", str(MASK), "--languages",
                                    "en,fr", "--facts", "f_nosub"], ["f_nosub/en/test.jsonl line 2"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES])
def test_hostile_outputs_are_one_line_exit_2(outputs, capsys, monkeypatch, argv, words):
    test_bad_input_is_one_line_exit_2(outputs, capsys, monkeypatch, argv, words)


def test_a_grid_shares_its_folder_with_its_own_processes_only(tmp_path):
    """Row 6: the processes of one grid (ranks, shards) hold the folder together; another grid is refused."""
    from lapeval.grid.config import GridConfig, GridError
    from lapeval.grid.run import grid_lock

    one = GridConfig.from_dict({"model": "x", "tasks": ["a"], "output": str(tmp_path / "g")})
    other = GridConfig.from_dict({"model": "x", "tasks": ["a", "b"], "output": str(tmp_path / "g")})
    with grid_lock(one), grid_lock(one):
        with pytest.raises(GridError, match="another grid is running"):
            with grid_lock(other):
                pass
    with grid_lock(other):  # released: the next grid takes the folder
        pass
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["grid.lock"]


def test_names_become_paths_inside_their_folder(tmp_path):
    """Row 1: every name the grid derives a path from (a task's samples file, a heatmap, a model's folder, a
    cell's folder) is one component inside its folder, for any text; ordinary names keep their file names."""
    from test_safe_names import HOSTILE

    from lapeval._io import inside
    from lapeval.grid.config import Cell, GridConfig, ModelEntry
    from lapeval.grid.report import _slug
    from lapeval.intervention.operation import parse_ops
    from lapeval.results import samples_path

    cell_dir = tmp_path / "g" / "cells" / "baseline"
    for name in HOSTILE:
        p = samples_path(cell_dir, name)
        assert p.parent == cell_dir and inside(cell_dir, p) == cell_dir / p.name, name
        fig = tmp_path / "g" / "heatmaps" / f"{_slug(name, name, name, name)}.png"
        assert inside(fig.parent, fig).parent == fig.parent and len(fig.name.encode()) <= 255, name
    assert samples_path(cell_dir, "lss_en").name == "samples_lss_en.jsonl"
    assert _slug("set:p_max", "lss", "margin", "none") == "set=p_max_lss_margin_none"
    long = parse_ops(";".join(f"scale:1.{i:04d}@en@0" for i in range(1, 27)) + ";set:p_max")
    assert len(long.label) > 450
    folder = Cell("fr", long).folder
    assert len(folder.encode()) == 255 and "/" not in folder and Cell("fr", parse_ops("set:p_max")).folder == "set=p_max__fr"
    cfg = GridConfig.from_dict({"models": [{"name": "a.b_c-1", "pretrained": "x"}], "tasks": ["a"], "output": str(tmp_path / "g")})
    assert Path(cfg.for_model(ModelEntry("a.b_c-1", "x")).output) == tmp_path / "g" / "models" / "a.b_c-1"


def test_csv_and_markdown_writers_escape_names():
    """Rows 5 and 10: leaderboard.csv cells that a spreadsheet would run are quoted; markdown keeps names text."""
    from lapeval._io import markdown_text, printable, spreadsheet_safe
    from lapeval.grid import leaderboard

    names = ["=HYPERLINK(1)", "+1", "-1+2", "@SUM(1)", "\tx", "\rx", "plain", "<script>alert(1)</script>", "a|b"]
    lb = leaderboard.build({n: {"families": {}, "lss": {}, "best": None, "interventions": []} for n in names})
    import csv
    import io

    cells = [r[1] for r in csv.reader(io.StringIO(leaderboard.to_csv(lb)))][1:]
    assert sorted(cells) == sorted("'" + printable(n) if n[0] in "=+-@\t\r" else n for n in names)
    assert spreadsheet_safe(-1.5) == -1.5 and spreadsheet_safe("-") == "-"
    md = leaderboard.markdown(lb)
    assert "<script>" not in md and "&lt;script&gt;" in md and "a\\|b" in md
    header = [l for l in md.splitlines() if l.startswith("| rank")][0]
    for line in md.splitlines():
        if line.startswith("| "):  # every row has the header's columns (no name breaks the table)
            assert line.replace("\\|", "").count("|") == header.count("|"), line
    assert markdown_text("flores_ppl_fr") == "flores_ppl_fr" and markdown_text("a\nb") == "a\\nb"


def test_facts_empty_objects_and_repeats_are_left_out_with_one_warning(tmp_path, monkeypatch):
    """Row 9: a fact whose own object is empty, and a repeated fact, are dropped before LSS scores them, with
    one warning line each (not one per reader); the other rows are kept in order."""
    from lapeval.taskdata import mlama

    rows = _fact_rows()
    rows[2]["obj_en"] = ""
    _facts(tmp_path / "facts", _jsonl([*rows, {**rows[1], "id": 99}]))
    monkeypatch.chdir(tmp_path)
    from lapeval.errors import LapevalWarning
    from lapeval.lss.tasks import check_sources

    with pytest.warns(LapevalWarning) as got:
        check_sources(["en"], "facts")
    said = [str(w.message) for w in got]
    assert sorted(said) == ["facts file facts/en/test.jsonl: 1 repeated row(s) left out (line 5 = line 2)",
                            "facts file facts/en/test.jsonl: 1 row(s) with an empty obj_en left out (line 3)"], said
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", LapevalWarning)  # said once: the loader reading the same file is quiet
        ds = mlama("en", lapeval_facts_dir="facts")["test"]
    assert [r["id"] for r in ds] == [rows[0]["id"], rows[1]["id"], rows[3]["id"]]


def _tiny_grid_yaml(path: Path, model, mask, **extra) -> Path:
    d = {"model": str(model), "neurons": str(mask), "targets": ["fr"], "tasks": ["lss_en"], "limit": 3,
         "batch_size": 4, "device": "cpu", "bootstrap_iters": 0, "ci_resamples": 50, "facts": "builtin",
         "model_args": {"max_length": 256}, "output": "g", **extra}
    path.write_text(json.dumps(d))
    return path


def test_a_shard_says_what_it_did_and_how_to_build_the_summary(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Row 14: ``--shard 0/2`` names its cells and the summary command; it writes no summary."""
    from lapeval import cli

    monkeypatch.chdir(tmp_path)
    cfg = _tiny_grid_yaml(tmp_path / "g.yaml", tiny_model_dir, random_mask(tmp_path / "m.safetensors"))
    assert cli.main(["grid", str(cfg), "--shard", "0/2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["shard 0/2: 1 cell(s) run, 0 reused; no summary yet: once every shard has finished, run: "
                   "lapeval grid --summary-only --output g"], out
    assert not (tmp_path / "g" / "summary.md").exists()
    assert cli.main(["grid", str(cfg), "--shard", "1/2"]) == 0
    assert cli.main(["grid", "--summary-only", "--output", "g"]) == 0
    assert (tmp_path / "g" / "summary.md").is_file()


def test_no_output_path_leaves_the_output_folder(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Rows 1, 2, 10, 12 on the tiny model: a task named ``t/../../../../tmp/x`` reached through an innocent group
    of an include_path, reporting a metric named ``../../../m<script>|x``, a 460-character composite
    intervention and a lang_map pattern that matches nothing. Every file the grid writes is under its output
    folder, each cell has its own samples (so the intervals are not [0, 0]), the markdown keeps the names as
    text, the pattern gets one warning, and the summary rebuilds."""
    from lapeval import cli
    from lapeval.paths import tasks_path

    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "innocent.yaml").write_text('group: innocent\ntask: ["t/../../../../tmp/x"]\nmetadata: {version: 1.0}\n')
    (inc / "evil.yaml").write_text(
        f"include: {tasks_path() / 'lss' / '_lss_template_yaml'}\ntask: \"t/../../../../tmp/x\"\ndataset_name: en\n"
        "dataset_kwargs: {lapeval_lang: en}\nprocess_results: !function hostile_util.process\n"
        'metric_list:\n  - metric: "../../../m<script>|x"\n    aggregation: mean\n    higher_is_better: true\n'
        "metadata: {version: 1.0, lapeval_language: en}\n")
    (inc / "hostile_util.py").write_text('def process(doc, results):\n    return {"../../../m<script>|x": float(results[0][0])}\n')
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    long = ";".join(f"scale:1.{i:04d}@en@0" for i in range(1, 27)) + ";set:p_max"
    cfg = _tiny_grid_yaml(work / "g.yaml", tiny_model_dir, random_mask(tmp_path / "m.safetensors", per_lang=16,
                          p_max_low=2.0, p_max_span=6.0), tasks=["innocent", "lss_en"], include_path=[str(inc)],
                          interventions=["set:p_max", long], lang_map={"nomatch_*": "fr", "t/*": "en"})
    before = {p for p in tmp_path.rglob("*")}
    assert cli.main(["grid", str(cfg)]) == 0
    err = capsys.readouterr().err
    new = {p for p in tmp_path.rglob("*")} - before
    out = work / "g"
    assert new and all(p == out or p.is_relative_to(out) for p in new), sorted(map(str, new - {out}))[:5]
    assert [l for l in err.splitlines() if "warning" in l and "lang_map" in l] == [
        "lapeval grid: warning: lang_map: 'nomatch_*' matches none of the evaluated tasks "
        "(lss_en, t/../../../../tmp/x): check its spelling"]
    cells = sorted((out / "cells").iterdir())
    assert len(cells) == 3 and max(len(c.name.encode()) for c in cells) == 255 and (out / "cells" / "set=p_max__fr").is_dir()
    for c in cells:
        assert len(list(c.glob("samples_t_*~*.jsonl"))) == 1 and (c / "samples_lss_en.jsonl").is_file()
    s = json.loads((out / "summary.json").read_text())
    evil = [r for r in s["rows"] if r["task"].startswith("t/") and r["cell"] != "baseline"]
    assert len(evil) == 2 and all(r["ci_low"] != r["ci_high"] for r in evil), evil
    for md in ("summary.md", "leaderboard.md"):
        text = (out / md).read_text()
        assert "<script>" not in text and "m&lt;script&gt;\\|x" in text, md
    assert cli.main(["grid", "--summary-only", "--output", "g"]) == 0
