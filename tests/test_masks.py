"""Mask files: round trip, self-description, reference import/export, and every error path."""

import json

import pytest
import torch
from safetensors import safe_open

from lapeval.masks import MaskError, NeuronMask, export_reference, import_reference

LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]


def random_mask(seed=0, langs=LANGS, n_layers=4, d_ff=32, empty=("ja",)):
    g = torch.Generator().manual_seed(seed)
    assigned = torch.rand(len(langs), n_layers, d_ff, generator=g) > 0.85
    for lang in empty:
        assigned[langs.index(lang)] = False
    values = {"p_max": torch.rand(len(langs), n_layers, d_ff, generator=g),
              "p_median": torch.rand(len(langs), n_layers, d_ff, generator=g)}
    meta = {"model_id": "test/model", "selection": {"method": "lape", "top_rate": 0.01}}
    return NeuronMask.from_assignment(assigned, langs, values, meta), assigned, values


def test_round_trip_keeps_sets_values_and_metadata(tmp_path):
    mask, assigned, values = random_mask()
    path = mask.save(tmp_path / "m.safetensors")
    back = NeuronMask.load(path)
    assert back.languages == LANGS and (back.n_layers, back.d_ff) == (4, 32)
    for i, lang in enumerate(LANGS):
        assert torch.equal(back.as_bool(lang), assigned[i])
        for kind in ("p_max", "p_median"):
            got = torch.zeros(4, 32)
            for l, (idx, val) in enumerate(zip(back.per_layer(lang), back.values_per_layer(lang, kind))):
                got[l, idx] = val
            torch.testing.assert_close(got, torch.where(assigned[i], values[kind][i], torch.zeros(())))
    assert len(back.sets["ja"]) == 0 and back.per_layer("ja")[0].numel() == 0  # empty language kept
    assert back.meta["model_id"] == "test/model" and back.meta["lapeval_version"]
    with safe_open(str(path), framework="pt") as f:  # self-describing without lapeval
        header = f.metadata()
    assert header["format"] == "lapeval.neuron_mask" and json.loads(header["languages"]) == LANGS
    assert back.sha256() == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_summary_counts_and_overlap():
    mask, assigned, _ = random_mask(1)
    s = mask.summary()
    assert s["unique_neurons"] == int(assigned.any(0).sum())
    for i, lang in enumerate(LANGS):
        assert s["per_language"][lang]["total"] == int(assigned[i].sum())
        assert s["per_language"][lang]["per_layer"] == assigned[i].sum(1).tolist()
    jac = mask.jaccard()
    a, b = assigned[0].flatten(), assigned[1].flatten()
    assert jac[0, 1].item() == pytest.approx(float((a & b).sum() / (a | b).sum()))
    assert jac[6, 6].item() == 0.0  # empty set


def test_language_lookup_accepts_any_spelling_and_lists_available():
    mask, assigned, _ = random_mask(2)
    assert torch.equal(mask.as_bool("jpn_Jpan"), mask.as_bool("ja"))
    with pytest.raises(MaskError, match="'de' is not in this mask file: it has en, zh, fr, es, vi, id, ja"):
        mask.per_layer("de")


def test_model_mismatch_is_one_line():
    mask, _, _ = random_mask()
    mask.check_model(4, 32)
    with pytest.raises(MaskError) as e:
        mask.check_model(18, 2048, "gemma-3-270m")
    assert "4 layers × 32" in str(e.value) and "18 × 2048" in str(e.value) and "\n" not in str(e.value)


def test_rucaibox_export_import_round_trip(tmp_path):
    mask, assigned, _ = random_mask(3, empty=())
    export_reference(mask, tmp_path / "x.neuron.pth", "rucaibox")
    raw = torch.load(tmp_path / "x.neuron.pth", weights_only=True)
    assert len(raw) == 7 and len(raw[0]) == 4 and raw[0][0].dtype == torch.int64
    back = import_reference(tmp_path / "x.neuron.pth", "rucaibox", ",".join(LANGS), d_ff=32)
    for i, lang in enumerate(LANGS):
        assert torch.equal(back.as_bool(lang), assigned[i])
    assert back.meta["selection"]["source"] == "imported from rucaibox"


def test_lang_task_neuron_layout_with_values(tmp_path):
    langs = ["en", "nl", "id"]
    mask, assigned, values = random_mask(4, langs=langs, empty=())
    written = export_reference(mask, tmp_path / "lape.pth", "lang-task-neuron")
    assert [p.name for p in written] == ["lape.pth", "lape.max.pt", "lape.median.pt"]
    back = import_reference(tmp_path / "lape.pth", "lang-task-neuron", langs, p_max=tmp_path / "lape.max.pt",
                            p_median=tmp_path / "lape.median.pt")
    assert back.d_ff == 32 and not back.meta["d_ff_inferred"]
    for i, lang in enumerate(langs):
        assert torch.equal(back.as_bool(lang), assigned[i])
        s = back.sets[lang]
        torch.testing.assert_close(s.values["p_max"], values["p_max"][i][s.layer, s.neuron])


class NotATensor:
    pass


def test_import_errors(tmp_path):
    mask, _, _ = random_mask(5, empty=())
    export_reference(mask, tmp_path / "x.pth")
    with pytest.raises(MaskError, match="7 language entries but 6 languages"):
        import_reference(tmp_path / "x.pth", "rucaibox", "en,zh,fr,es,vi,id")
    with pytest.raises(MaskError, match="does not exist"):
        import_reference(tmp_path / "nope.pth", "rucaibox")
    with pytest.raises(MaskError, match="unknown mask format"):
        import_reference(tmp_path / "x.pth", "other")
    torch.save({"a": 1}, tmp_path / "dict.pth")
    with pytest.raises(MaskError, match="not a list of per-language lists"):
        import_reference(tmp_path / "dict.pth", "rucaibox")

    torch.save([[NotATensor()]], tmp_path / "evil.pth")  # a pickle that weights_only refuses to execute
    with pytest.raises(MaskError, match="weights-only"):
        import_reference(tmp_path / "evil.pth", "rucaibox", "en")
    inferred = import_reference(tmp_path / "x.pth", "rucaibox")
    assert inferred.meta["d_ff_inferred"] and inferred.d_ff <= 32
    inferred.check_model(4, 32)  # an inferred width accepts the real, wider model
    with pytest.raises(MaskError, match="indexes neuron"):
        import_reference(tmp_path / "x.pth", "rucaibox", d_ff=4)


def test_load_errors(tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        NeuronMask.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(MaskError, match="not a safetensors mask"):
        NeuronMask.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MaskError, match="not a lapeval neuron mask"):
        NeuronMask.load(tmp_path / "other.safetensors")
    save_file({"en.layer": torch.tensor([9]), "en.neuron": torch.tensor([0])}, str(tmp_path / "bad.safetensors"),
              metadata={"format": "lapeval.neuron_mask", "format_version": "1", "languages": '["en"]',
                        "n_layers": "2", "d_ff": "4"})
    with pytest.raises(MaskError, match="outside 2 layers"):
        NeuronMask.load(tmp_path / "bad.safetensors")
    mask, _, _ = random_mask()
    with pytest.raises(MaskError, match="no p_mean values"):
        mask.values_per_layer("en", "p_mean")


def test_written_files_get_a_normal_mode(tmp_path):
    import os

    mask, _, _ = random_mask()
    path = mask.save(tmp_path / "m.safetensors")
    old = os.umask(0o022)
    os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~old


def test_saving_twice_gives_the_same_bytes_in_any_process(tmp_path):
    """The mask's sha256 keys grid cells, caches and provenance: saving the same mask (or statistics) again,
    in another process, must give the same bytes (safetensors writes its header from a hash map)."""
    import subprocess
    import sys

    from lapeval._io import sha256_file

    code = ("import sys, torch\n"
            "from lapeval.masks import NeuronMask\n"
            "g = torch.Generator().manual_seed(0)\n"
            "a = torch.rand(3, 2, 48, generator=g) < 0.2\n"
            "v = {'p_max': torch.rand(3, 2, 48, generator=g), 'p_median': torch.rand(3, 2, 48, generator=g)}\n"
            "NeuronMask.from_assignment(a, ['en', 'fr', 'ja'], v, {'method': 'lape', 'b': 1, 'a': 2}).save(sys.argv[1])\n")
    shas = []
    for i in range(3):
        out = tmp_path / f"m{i}.safetensors"
        r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        shas.append(sha256_file(out))
    assert len(set(shas)) == 1, shas
    from lapeval.masks import NeuronMask

    m = NeuronMask.load(tmp_path / "m0.safetensors")
    assert m.languages == ["en", "fr", "ja"] and m.meta["method"] == "lape"
