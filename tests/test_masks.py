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


# ---- hostile and broken files (issue 24 rows 3, 4, 7, 8) --------------------------------------------------
from lapeval.masks import MAX_NEURONS, CorruptMaskError  # noqa: E402

HEADER = {"format": "lapeval.neuron_mask", "format_version": "1", "languages": '["en"]', "n_layers": "2", "d_ff": "4"}
GOOD = {"en.layer": torch.tensor([0, 1]), "en.neuron": torch.tensor([3, 0]),
        "en.p_max": torch.tensor([1.0, 2.0]), "en.p_median": torch.tensor([0.5, 0.25])}


def _mask_file(path, tensors=None, **header):
    from safetensors.torch import save_file

    save_file({**GOOD, **(tensors or {})}, str(path), metadata={**HEADER, **header})
    return path


@pytest.mark.parametrize("name,tensors,header,words", [
    ("nan", {"en.p_max": torch.tensor([1.0, float("nan")])}, {}, ["en.p_max", "NaN or infinite"]),
    ("inf", {"en.p_median": torch.tensor([float("-inf"), 0.0])}, {}, ["en.p_median", "NaN or infinite"]),
    ("huge-shape", {}, {"n_layers": "1000000000000"}, ["1000000000000 layers", "not the shape of a model"]),
    ("huge-width", {}, {"d_ff": str(MAX_NEURONS)}, ["not the shape of a model"]),
    ("negative-shape", {}, {"d_ff": "-4"}, ["-4 FFN neurons"]),
    ("zero-layers", {}, {"n_layers": "0"}, ["0 layers"]),
    ("string-for-object", {}, {"lapeval": json.dumps({"selection": "lape"})}, ["a str under 'selection'"]),
    ("string-for-bool", {}, {"lapeval": json.dumps({"d_ff_inferred": "no"})}, ["'d_ff_inferred'"]),
    ("2d-tensors", {"en.layer": torch.tensor([[0, 1]]), "en.neuron": torch.tensor([[3, 0]])}, {}, ["en.layer", "2-D"]),
    ("2d-values", {"en.p_max": torch.tensor([[1.0, 2.0]])}, {}, ["en.p_max", "2-D"]),
    ("language-twice", {}, {"languages": '["en", "en"]'}, ["en twice"]),
    ("empty-language", {}, {"languages": '["en", ""]'}, ["not a list of codes"]),
    ("float-indices", {"en.layer": torch.tensor([0.0, 1.7])}, {}, ["en.layer", "not integer"]),
    ("int-values", {"en.p_max": torch.tensor([1, 2])}, {}, ["en.p_max", "not floating point"]),
    ("repeated-neuron", {"en.layer": torch.tensor([1, 1]), "en.neuron": torch.tensor([0, 0])}, {}, ["not sorted"]),
])
def test_corrupt_masks_are_refused_in_one_line(tmp_path, name, tensors, header, words):
    path = _mask_file(tmp_path / f"{name}.safetensors", tensors, **header)
    with pytest.raises(CorruptMaskError) as e:
        NeuronMask.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "corrupt mask" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert isinstance(e.value, MaskError) and isinstance(e.value, ValueError)


def test_a_sound_hand_written_mask_loads(tmp_path):
    m = NeuronMask.load(_mask_file(tmp_path / "ok.safetensors"))
    assert m.per_layer("en")[1].tolist() == [0] and m.values_per_layer("en", "p_max")[0].tolist() == [1.0]


def _pth(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("name,obj,words", [
    ("negative", [[torch.tensor([0, 2]), torch.tensor([-1, 3])]], ["en, layer 1", "index -1"]),
    ("fraction", [[torch.tensor([1.7, 2.0])]], ["en, layer 0", "1.7", "not integer"]),
    ("whole-floats", [[torch.tensor([1.0])]], ["en, layer 0", "float32", "not integer"]),
    ("2d-index", [[torch.tensor([[1, 2], [3, 4]])]], ["en, layer 0", "2-D", "[2, 2]"]),
    ("scalar-index", [[torch.tensor(3)]], ["en, layer 0", "0-D"]),
    ("no-layers", [[]], ["en has no layers"]),
    ("list-not-tensors", [[[1, 2, 3]]], ["en, layer 0", "is a list, not an index tensor"]),
    ("string-not-tensor", [["12"]], ["en, layer 0", "is a str"]),
    ("bool-index", [[torch.tensor([True, False])]], ["en, layer 0", "torch.bool"]),
    ("1tb-index", [[torch.tensor([10**12])]], ["1000000000001 FFN neurons", "not the shape of a model"]),
    ("layers-differ", None, ["fr has 1 layers but en has 2"]),
])
def test_bad_reference_files_are_refused_naming_language_and_layer(tmp_path, name, obj, words):
    langs = "en"
    if obj is None:
        obj, langs = [[torch.tensor([0]), torch.tensor([1])], [torch.tensor([0])]], "en,fr"
    path = _pth(tmp_path / f"{name}.pth", obj)
    with pytest.raises(CorruptMaskError) as e:
        import_reference(path, "rucaibox", langs)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "corrupt mask" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_import_bounds_sizes_before_allocating(tmp_path):
    """A lang-task-neuron values file that claims [1, 1, 10^12] (an expanded view: 1.5 KB on disk) is refused
    from its shape; nothing of that size is allocated (which would take 4 TB)."""
    idx = _pth(tmp_path / "lape.pth", [[torch.tensor([0, 5])]])
    huge = _pth(tmp_path / "max.pt", torch.zeros(1).expand(1, 1, 10**12))
    assert huge.stat().st_size < 10_000
    with pytest.raises(CorruptMaskError, match="1 layers × 1000000000000 FFN neurons"):
        import_reference(idx, "lang-task-neuron", "en", p_max=huge)
    nan = _pth(tmp_path / "nan.pt", torch.tensor([[[0.0, 1, 2, 3, 4, float("nan")]]]))
    with pytest.raises(CorruptMaskError, match="en.p_max holds NaN"):
        import_reference(idx, "lang-task-neuron", "en", p_max=nan)
    narrow = _pth(tmp_path / "narrow.pt", torch.zeros(1, 1, 3))
    with pytest.raises(MaskError, match="holds 3 p_max values per layer but d_ff is 8"):
        import_reference(idx, "lang-task-neuron", "en", d_ff=8, p_max=narrow)
    empty = _pth(tmp_path / "empty.pth", [[torch.tensor([], dtype=torch.long)]])
    with pytest.raises(MaskError, match="no neuron in any language.*--d-ff"):
        import_reference(empty, "rucaibox", "en")
    assert len(import_reference(empty, "rucaibox", "en", d_ff=8).sets["en"]) == 0  # with a width it is a mask
    with pytest.raises(MaskError, match="--d-ff -3"):
        import_reference(idx, "rucaibox", "en", d_ff=-3)


def test_import_keeps_repeats_once_and_sorts(tmp_path):
    path = _pth(tmp_path / "x.pth", [[torch.tensor([5, 1, 5]), torch.tensor([2])], [torch.tensor([], dtype=torch.long), torch.tensor([0])]])
    m = import_reference(path, "rucaibox", "en,fr", d_ff=8)
    assert m.per_layer("en")[0].tolist() == [1, 5] and m.per_layer("fr")[1].tolist() == [0]
    back = NeuronMask.load(m.save(tmp_path / "x.safetensors"))  # what import writes, load accepts
    assert torch.equal(back.as_bool("en"), m.as_bool("en"))


def test_masks_show_escapes_terminal_controls(tmp_path, capsys):
    from lapeval import cli

    evil = "\x1b[2J\x1b]0;owned\x07\x9b1A\u202e"
    mask, _, _ = random_mask(6, langs=["en", "fr"], empty=())
    mask.meta.update({"model_id": f"m{evil}", "architecture": evil, "corpus": f"files:{evil}\nFAKE LINE",
                      "site": {"module": evil, "output_of": evil}, "selection": {evil: evil},
                      "n_tokens": {"en": evil}})
    path = mask.save(tmp_path / "evil.safetensors")
    assert cli.main(["masks", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x9b\u202e\r"), repr(out)
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x9b1A\\u202e" in out and "\\nFAKE LINE" in out
    assert not any(l.startswith("FAKE") for l in out.splitlines())
    assert cli.main(["masks", "show", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x9b\u202e\r"), repr(out)
    assert json.loads(out)["meta"]["architecture"] == evil  # the same JSON, escaped
