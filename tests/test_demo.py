"""The offline demo: bundled text, prompts, and a small end-to-end run on the real model."""

import json

import pytest

from lapeval.demo import (
    DEMO_TEXT,
    DemoConfig,
    committed_mask,
    demo_sentences,
    run,
    sentence_start,
    split_text,
)


def test_bundled_text_is_parallel_and_split_without_overlap():
    langs = sorted(p.stem for p in DEMO_TEXT.glob("*.txt"))
    assert {"en", "fr", "id", "zh", "ja", "ru"} <= set(langs)
    assert {len(demo_sentences(l)) for l in langs} == {120}
    ident, held = split_text("fr", 30)
    assert len(ident) == 90 and len(held) == 30 and not set(ident) & set(held)
    with pytest.raises(ValueError, match="no bundled demo text for ko"):
        demo_sentences("ko")


def test_prompts_are_sentence_beginnings():
    assert sentence_start("one two three four five") == "one two three"
    assert sentence_start("光的速度比声音快") == "光的速度"
    assert committed_mask().name == "gemma-3-270m.safetensors"


@pytest.mark.real
def test_demo_end_to_end_on_the_real_model(tmp_path, real_model_dir):
    cfg = DemoConfig(out=str(tmp_path / "demo"), languages="fr,zh", n_eval=6, n_facts=6, n_prompts=1, max_gen_toks=6)
    report = run(cfg, log=lambda m: None)
    text = report.read_text()
    for section in ("Where the language neurons sit", "Deactivation", "LSS(s, t)", "Mean target-language share"):
        assert section in text
    for png in ("neurons.png", "deactivation.png", "lss.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:4] == b"\x89PNG"
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    delta = res["perplexity"]["delta_nll"]
    # paper 1: zeroing a language's neurons hurts that language more than the other one
    assert delta["fr"]["fr"] > delta["fr"]["zh"] and delta["zh"]["zh"] > delta["zh"]["fr"]
    assert delta["zh"]["zh"] > 1.0
    assert 0.0 <= res["lss"]["mean_off_diagonal"] <= 1.0
    assert res["mask_sha256"] and set(res["steering"]["share"]) == {"fr", "zh"}
