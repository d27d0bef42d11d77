"""The identification commands end to end: collect / select / identify / masks, and their error lines."""

import json

import pytest
import torch
from conftest import ROOT, require_shared
from test_stats import _write_corpus

from lapeval.cli import main
from lapeval.identification.stats import Stats
from lapeval.masks import NeuronMask


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture()
def tiny_corpus(tmp_path):
    _write_corpus(tmp_path, ["en", "fr", "zh"])
    return f"files:{tmp_path}/{{lang}}.txt"


def test_identify_on_a_tiny_model_then_show_plot_export_import(tmp_path, capsys, tiny_model_dir, tiny_corpus):
    out = tmp_path / "masks" / "tiny.safetensors"
    rc, stdout, _ = run(capsys, "identify", "--model", tiny_model_dir, "--languages", "en,fr,zh", "--corpus", tiny_corpus,
                        "--max-tokens", 300, "--n-sentences", 5, "--top-rate", 0.05, "--out", out, "--plot", "--no-progress")
    assert rc == 0 and out.exists() and out.with_suffix(".png").stat().st_size > 1000
    stats = Stats.load(tmp_path / "masks" / "tiny.stats.safetensors")
    assert stats.n_tokens.tolist() == [300, 300, 300] and stats.n_sentences.tolist() == [5, 5, 5]
    mask = NeuronMask.load(out)
    assert mask.unique_neurons() == round(0.05 * 2 * 48)
    assert mask.meta["site"]["module"] == "model.layers.{layer}.mlp.act_fn" and mask.meta["n_tokens"]["fr"] == 300
    assert mask.meta["selection"]["top_rate"] == 0.05 and mask.meta["corpus"] == tiny_corpus
    assert mask.has_values("p_max") and mask.has_values("p_median")
    for lang in mask.languages:  # the stored values are the statistics' values at those neurons
        i = stats.languages.index(lang)
        s = mask.sets[lang]
        assert torch.equal(s.values["p_max"], stats.act["act_max"][i][s.layer, s.neuron])
        assert bool((s.values["p_max"] >= s.values["p_median"]).all())

    rc, stdout, _ = run(capsys, "masks", "show", out, "--json")
    shown = json.loads(stdout)
    assert rc == 0 and shown["languages"] == ["en", "fr", "zh"] and (shown["n_layers"], shown["d_ff"]) == (2, 48)
    assert shown["unique_neurons"] == mask.unique_neurons()
    assert {l: v["total"] for l, v in shown["per_language"].items()} == {l: len(mask.sets[l]) for l in mask.languages}
    assert all(sum(v["per_layer"]) == v["total"] for v in shown["per_language"].values())
    rc, stdout, _ = run(capsys, "masks", "show", out)
    assert rc == 0 and "model.layers.{layer}.mlp.act_fn" in stdout

    rc, _, _ = run(capsys, "masks", "plot", out, "--out", tmp_path / "p.png")
    assert rc == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"

    rc, _, _ = run(capsys, "masks", "export", out, "--format", "rucaibox", "--out", tmp_path / "x.pth")
    rc2, stdout, _ = run(capsys, "masks", "import", tmp_path / "x.pth", "--format", "rucaibox", "--languages",
                         "en,fr,zh", "--d-ff", 48, "--out", tmp_path / "back.safetensors")
    assert rc == rc2 == 0
    back = NeuronMask.load(tmp_path / "back.safetensors")
    assert all(torch.equal(back.as_bool(l), mask.as_bool(l)) for l in mask.languages)

    # select again from the kept statistics with other settings
    rc, stdout, _ = run(capsys, "select", "--stats", tmp_path / "masks" / "tiny.stats.safetensors", "--out",
                        tmp_path / "act.safetensors", "--method", "language-activated")
    act = NeuronMask.load(tmp_path / "act.safetensors")
    assert rc == 0 and act.meta["selection"]["method"] == "language_activated"
    for lang in act.languages:
        assert torch.equal(act.as_bool(lang), stats.act["act_min"][stats.languages.index(lang)] > 0)


def test_select_reads_a_hand_made_stats_file(tmp_path, capsys):
    """The documented STATS format: over_zero, n_tokens and the 'languages' metadata key suffice."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    n = torch.tensor([1000, 1000, 1000])
    save_file({"over_zero": (torch.rand(3, 2, 100, generator=g) ** 4 * 1000).long(), "n_tokens": n},
              str(tmp_path / "s.safetensors"), metadata={"languages": json.dumps(["en", "ja", "sw"])})
    rc, stdout, _ = run(capsys, "select", "--stats", tmp_path / "s.safetensors", "--out", tmp_path / "m.safetensors")
    assert rc == 0 and "2 neurons" in stdout
    assert NeuronMask.load(tmp_path / "m.safetensors").languages == ["en", "ja", "sw"]


@pytest.mark.parametrize("argv, message", [
    (["identify", "--model", "x", "--languages", "en,klingon", "--corpus", "files:/x/{lang}", "--out", "m.safetensors"],
     "unknown language 'klingon'"),
    (["identify", "--model", "x", "--languages", "en,en", "--corpus", "files:/x/{lang}", "--out", "m.safetensors"],
     "names en twice"),
    (["identify", "--model", "x", "--languages", "en", "--corpus", "books:/x", "--out", "m.safetensors"],
     "unknown corpus source"),
    (["identify", "--model", "x", "--languages", "en", "--corpus", "files:/nowhere/{lang}.txt", "--out", "m.safetensors"],
     "has no text for en"),
    (["identify", "--model", "x", "--languages", "en", "--corpus", "ntrex:/x", "--out", "m.pt"], "should end in .safetensors"),
    (["collect", "--model", "/no/such/model", "--languages", "en", "--corpus", "CORPUS", "--out", "s.safetensors"],
     "neither a known name"),
    (["collect", "--model", "M", "--languages", "en", "--corpus", "CORPUS", "--max-tokens", "0", "--out", "s.safetensors"],
     "--max-tokens must be positive"),
    (["collect", "--model", "M", "--languages", "en", "--corpus", "CORPUS", "--dtype", "int8", "--out", "s.safetensors"],
     "unknown dtype 'int8'"),
    (["select", "--stats", "/no/stats.safetensors", "--out", "m.safetensors"], "run lapeval collect first"),
    (["select", "--stats", "STATS", "--top-rate", "2", "--out", "m.safetensors"], "top_rate=2.0 is outside (0, 1]"),
    (["masks", "show", "/no/mask.safetensors"], "does not exist"),
    (["masks", "import", "/no/x.pth", "--format", "rucaibox", "--out", "m.safetensors"], "does not exist"),
    (["models", "prepare", "gpt-5"], "unknown model 'gpt-5'"),
])
def test_errors_are_one_line(argv, message, tmp_path, capsys, tiny_model_dir, tiny_corpus):
    stats = tmp_path / "s.safetensors"
    Stats(["en"], torch.ones(1, 1, 10, dtype=torch.long), torch.tensor([5])).save(stats)
    subst = {"M": str(tiny_model_dir), "CORPUS": tiny_corpus, "STATS": str(stats)}
    argv = [subst.get(a, a) for a in argv]
    argv = [str(tmp_path / a) if a.endswith((".safetensors", ".pt")) and "/" not in a else a for a in argv]
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob(".*"))  # nothing half-written


@pytest.mark.real
def test_committed_gemma_mask_fits_the_real_model(real_model, capsys):
    from lapeval.sites import find_sites

    path = ROOT / "neuron_masks" / "gemma-3-270m.safetensors"
    mask = NeuronMask.load(path)
    sites = find_sites(real_model[0])
    mask.check_model(len(sites), sites[0].d_ff)
    assert mask.unique_neurons() == round(0.01 * 18 * 2048)
    assert {"en", "zh", "ja", "id", "vi", "fr", "es", "ru", "th", "ta", "ar", "sw"} <= set(mask.languages)
    assert all(n >= 50_000 for n in mask.meta["n_tokens"].values())
    assert mask.meta["model_id"] == "google/gemma-3-270m" and mask.has_values("p_max")
    assert "ntrex" in mask.meta["corpus"] and "flores" not in mask.meta["corpus"]  # FLORES is kept for evaluation
    assert path.with_suffix(".png").is_file()


@pytest.mark.real
def test_identify_on_the_real_model(tmp_path, capsys, real_model_dir):
    ntrex = require_shared("ntrex128")
    out = tmp_path / "g.safetensors"
    rc, stdout, err = run(capsys, "identify", "--model", "gemma-3-270m", "--languages", "en,zh,ja,sw",
                          "--corpus", f"ntrex:{ntrex}", "--max-tokens", 1500, "--n-sentences", 20, "--out", out,
                          "--no-progress")
    assert rc == 0, err
    mask = NeuronMask.load(out)
    assert mask.unique_neurons() == 369 and (mask.n_layers, mask.d_ff) == (18, 2048)
    assert all(len(mask.sets[l]) > 0 for l in mask.languages)
    assert mask.meta["model_revision"].startswith("gguf-q4_k_m-sha256:") and mask.meta["architecture"] == "Gemma3ForCausalLM"
    stats = Stats.load(tmp_path / "g.stats.safetensors")
    assert stats.n_tokens.tolist() == [1500] * 4
    p = stats.over_zero.double() / 1500
    # GELU-tanh gates fire on a minority of tokens; the selected neurons are far above the pooled 95th percentile
    assert 0.05 < float(p.mean()) < 0.5
    bar = mask.meta["selection"]["activation_bar"]
    for i, lang in enumerate(stats.languages):
        s = mask.sets[lang]
        assert bool((p[i][s.layer, s.neuron] > bar).all())
