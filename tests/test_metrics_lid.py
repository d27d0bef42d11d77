"""fastText language identification: offline model, labels mapped to lapeval codes, a user model path,
the steering metric, and accuracy on FLORES devtest sentences."""

from __future__ import annotations

import pytest
from conftest import require_shared

from lapeval.metrics import lid


def test_bundled_model_identifies_languages():
    assert lid.bundled_model_path().name == "lid.176.ftz"
    assert lid.identify("Le chat dort sur le canapé depuis ce matin.")[0] == "fr"
    assert lid.identify("猫はソファーの上で寝ています。")[0] == "ja"
    assert lid.identify("Con mèo đang ngủ trên ghế sofa.")[0] == "vi"
    assert lid.identify("  \n ") == (None, 0.0)
    assert lid.identify("first line\nsecond line of English text")[0] == "en"  # newlines are flattened


def test_label_mapping_accepts_glotlid_style_labels():
    assert lid._to_code("__label__fr") == "fr"
    assert lid._to_code("__label__fra_Latn") == "fr"
    assert lid._to_code("__label__cmn_Hani") == "zh"
    assert lid._to_code("__label__xyz_Latn") == "xyz_Latn"


def test_user_model_path(monkeypatch, tmp_path):
    monkeypatch.setenv("LAPEVAL_LID_MODEL", str(lid.bundled_model_path()))
    assert lid.model_path() == lid.bundled_model_path()
    assert lid.is_language("Der Hund spielt im Garten mit einem Ball.", "de")
    monkeypatch.setenv("LAPEVAL_LID_MODEL", str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError):
        lid.identify("some text")


def test_steering_is_line_level():
    doc = {"lang": "fr"}
    assert lid.steering_results(doc, [" Le printemps est ma saison préférée.\nLes fleurs sont belles."]) == {"lang_match": 1}
    assert lid.steering_results(doc, [" Le printemps est ma saison préférée.\nSpring is my favourite season."]) == {"lang_match": 0}
    assert lid.steering_results(doc, ["   "]) == {"lang_match": 0}


@pytest.mark.parametrize("lang, floor", [("en", 0.99), ("fr", 0.99), ("zh", 0.95), ("ja", 0.99), ("id", 0.9),
                                         ("vi", 0.99), ("th", 0.99), ("ta", 0.99), ("ar", 0.99), ("ru", 0.99),
                                         ("es", 0.99), ("sw", 0.8)])
def test_flores_devtest_accuracy(lang, floor, monkeypatch):
    """The mask languages are identified on FLORES devtest (first 200 sentences); Swahili is the weak one."""
    from lapeval.taskdata import flores_sentences

    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(require_shared("flores200_devtest")))
    sents = flores_sentences(lang)[:200]
    acc = sum(lid.is_language(s, lang) for s in sents) / len(sents)
    assert acc >= floor
