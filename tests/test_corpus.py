"""Corpus specs: local FLORES / NTREX / TICO / files sources, concatenation, and errors."""

import json

import pytest
from conftest import require_shared

from lapeval.identification import corpus


def test_files_source_txt_and_jsonl(tmp_path):
    (tmp_path / "en.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "fr.jsonl").write_text(json.dumps({"text": "un"}) + "\n" + json.dumps({"text": "deux"}) + "\n")
    src = corpus.parse(f"files:{tmp_path}/{{lang}}.txt+files:{tmp_path}/{{lang}}.jsonl")
    assert list(corpus.texts(src, "en")) == ["one", "two"]
    assert list(corpus.texts(src, "fr")) == ["un", "deux"]
    with pytest.raises(corpus.CorpusError, match="no text for de"):
        corpus.check_languages(src, ["en", "de"])
    (tmp_path / "es.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(corpus.CorpusError, match="no 'text' field"):
        list(corpus.texts(src, "es"))


def test_shared_data_sources_in_order():
    ntrex, tico, flores = require_shared("ntrex128"), require_shared("tico19"), require_shared("flores200_devtest")
    src = corpus.parse(f"ntrex:{ntrex}+tico:{tico}")
    en = corpus.texts(src, "en")
    first = next(en)
    assert first == (ntrex / "NTREX-128" / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()[0]
    zh = list(corpus.texts(src, "zh"))
    assert len(zh) == 1997 + 2100  # NTREX zho-CN then TICO zh
    with pytest.warns(UserWarning, match="overlaps|evaluate on"):  # devtest named explicitly: it is the evaluation text
        corpus._WARNED.clear()
        devtest = corpus.parse(f"flores:{flores}:devtest")
    assert list(corpus.texts(devtest, "ja"))[0] == \
        (flores / "devtest" / "jpn_Jpan.devtest").read_text(encoding="utf-8").splitlines()[0]
    with pytest.raises(corpus.CorpusError, match="no dev split"):  # the default split is dev, which this copy lacks
        corpus.parse(f"flores:{flores}")
    with pytest.raises(corpus.CorpusError, match="no text for qu"):
        corpus.check_languages(src, ["en", "qu"])  # Quechua is only in FLORES


@pytest.mark.parametrize("spec, message", [
    ("books:/x", "unknown corpus source"),
    ("ntrex", "needs an argument"),
    ("ntrex:/does/not/exist", "does not exist"),
])
def test_bad_specs(spec, message):
    with pytest.raises(corpus.CorpusError, match=message):
        corpus.parse(spec)


def test_hub_source_fails_with_a_one_line_hint_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    src = corpus.parse("wikipedia:20231101")
    with pytest.raises(corpus.CorpusError) as e:
        next(corpus.texts(src, "sw"))
    assert "wikimedia/wikipedia" in str(e.value) and "20231101.sw" in str(e.value) and "local source" in str(e.value)
