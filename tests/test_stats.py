"""Activation statistics: exact counts under mixed-length batching, pads/BOS never counted, exact budget,
resume after a kill, and 2-process gloo data parallel equal to one process."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _CORPUS, tiny_model

from lapeval.identification import stats as stats_mod
from lapeval.identification.stats import (
    CollectConfig,
    LanguageStats,
    Stats,
    collect,
    collect_language,
    sequences,
    special_prefix,
)
from lapeval.sites import find_sites, stack_of


def texts_for(lang_index: int, n: int = 40, seed: int = 0) -> list[str]:
    """Varied-length texts: shuffled word spans of one corpus sentence."""
    rng = random.Random(seed + lang_index)
    words = _CORPUS[lang_index].split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def plain_stats(model, tokenizer, texts, budget, k):
    """One text at a time, capturing whole activations: count > 0 over non-BOS tokens, per-text means."""
    sites = find_sites(model)
    seqs = list(sequences(tokenizer, texts, budget, max_length=10_000))
    prefix = len(special_prefix(tokenizer))
    over_zero = torch.zeros(len(sites), sites[0].d_ff, dtype=torch.long)
    means = []
    for i, seq in enumerate(seqs):
        acts = {}
        hs = [s.module.register_forward_hook(lambda m, inp, o, l=s.layer: acts.__setitem__(l, o.reshape(-1, o.shape[-1])))
              for s in sites]
        with torch.no_grad():
            stack_of(model)(torch.tensor([seq]))
        for h in hs:
            h.remove()
        a = torch.stack([acts[l][prefix:] for l in range(len(sites))])  # [layers, tokens, d_ff]
        over_zero += (a > 0).sum(1)
        if i < k:
            means.append(a.float().mean(1))
    n = sum(len(s) - prefix for s in seqs)
    return over_zero, n, torch.stack(means)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt"])
def test_mixed_length_batches_count_exactly_what_one_at_a_time_does(family, tiny_tokenizer):
    model = tiny_model(family, dtype=torch.float64)
    texts = texts_for(1)
    ref_oz, ref_n, ref_means = plain_stats(model, tiny_tokenizer, texts, budget=10**9, k=7)
    for bs, bt in [(1, 10**6), (5, 200), (64, 8192)]:
        st = collect_language(model, tiny_tokenizer, texts, CollectConfig(10**9, 7, 512, bt, bs, window=16))
        assert st.n_tokens == ref_n
        assert torch.equal(st.over_zero, ref_oz)
        torch.testing.assert_close(st.sentence_means, ref_means, rtol=1e-5, atol=1e-6)


def test_budget_is_exact_and_prefix_never_counted(tiny_tokenizer):
    prefix = special_prefix(tiny_tokenizer)
    assert prefix == [tiny_tokenizer.bos_token_id]
    texts = texts_for(0, n=30)
    seqs = list(sequences(tiny_tokenizer, texts, budget=101, max_length=9))
    assert all(s[0] == prefix[0] and prefix[0] not in s[1:] and len(s) <= 9 for s in seqs)
    assert sum(len(s) - 1 for s in seqs) == 101
    all_ids = [t for text in texts for t in tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert [t for s in seqs for t in s[1:]] == all_ids[:101]  # chunks continue the text in order
    st = collect_language(tiny_model("llama"), tiny_tokenizer, texts, CollectConfig(101, 3, 9, 64, 4))
    assert st.n_tokens == 101 and st.n_texts == len(seqs) and st.sentence_means.shape[0] == 3


def test_p_max_median_min_summaries():
    means = torch.tensor([[[1.0]], [[4.0]], [[2.0]], [[3.0]]])  # 4 texts, even count
    s = LanguageStats(torch.zeros(1, 1, dtype=torch.long), 10, means).summary()
    assert s["act_max"].item() == 4.0 and s["act_min"].item() == 1.0
    assert s["act_median"].item() == 2.0  # the lower middle, as torch.median / the reference


def _collect_all(model, tok, out, langs, cfg, texts_of):
    return collect(model, tok, langs, texts_of, out, cfg, {"model_id": "tiny"}, progress=False, log=lambda *a: None)


def test_resume_after_a_kill_recomputes_only_missing_languages(tmp_path, tiny_tokenizer, monkeypatch):
    model = tiny_model("llama")
    langs = ["en", "fr", "es"]
    texts_of = lambda lang: texts_for(langs.index(lang))  # noqa: E731
    cfg = CollectConfig(200, 5, 64, 512, 8)
    clean = _collect_all(model, tiny_tokenizer, tmp_path / "clean.safetensors", langs, cfg, texts_of)

    real = stats_mod.collect_language
    calls = []

    def dies_on_es(m, t, texts, c, sites=None, progress=None):
        texts = list(texts)
        calls.append(texts[0])
        if texts[0] == texts_for(2)[0]:
            raise KeyboardInterrupt  # killed while collecting the third language
        return real(m, t, texts, c, sites, progress)

    monkeypatch.setattr(stats_mod, "collect_language", dies_on_es)
    out = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _collect_all(model, tiny_tokenizer, out, langs, cfg, texts_of)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "run.safetensors.parts").iterdir()) == ["en.safetensors", "fr.safetensors"]

    calls.clear()
    monkeypatch.setattr(stats_mod, "collect_language", real)
    resumed = _collect_all(model, tiny_tokenizer, out, langs, cfg, texts_of)
    monkeypatch.setattr(stats_mod, "collect_language", dies_on_es)
    assert out.exists() and not (tmp_path / "run.safetensors.parts").exists()
    assert torch.equal(resumed.over_zero, clean.over_zero) and torch.equal(resumed.n_tokens, clean.n_tokens)
    for k in clean.act:
        assert torch.equal(resumed.act[k], clean.act[k])

    # a part written under other settings is not reused
    stats_mod._save_part(tmp_path / "x.safetensors.parts" / "en.safetensors",
                         LanguageStats(torch.zeros(2, 48, dtype=torch.long), 1, torch.zeros(0, 2, 48)), key="other")
    monkeypatch.setattr(stats_mod, "collect_language", real)
    again = _collect_all(model, tiny_tokenizer, tmp_path / "x.safetensors", ["en"], cfg, texts_of)
    assert torch.equal(again.over_zero[0], clean.over_zero[0])


def test_stats_file_round_trip_and_errors(tmp_path):
    st = Stats(["en", "zh"], torch.randint(0, 9, (2, 3, 4)), torch.tensor([10, 12]), meta={"corpus": "x"})
    st.save(tmp_path / "s.safetensors")
    back = Stats.load(tmp_path / "s.safetensors")
    assert back.languages == ["en", "zh"] and torch.equal(back.over_zero, st.over_zero) and back.meta["corpus"] == "x"
    with pytest.raises(FileNotFoundError, match="run lapeval collect"):
        Stats.load(tmp_path / "missing.safetensors")
    Stats(["en"], torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([0])).save(tmp_path / "empty.safetensors")
    with pytest.raises(ValueError, match="no tokens counted for en"):
        Stats.load(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a safetensors statistics file"):
        Stats.load(tmp_path / "junk.safetensors")


def _write_corpus(root: Path, langs):
    for i, lang in enumerate(langs):
        (root / f"{lang}.txt").write_text("\n".join(texts_for(i, n=30)) + "\n", encoding="utf-8")


def test_two_process_gloo_equals_single_process(tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    tiny_model("gemma3", dtype=torch.float64).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    _write_corpus(tmp_path, ["en", "fr"])
    common = ["-m", "lapeval", "collect", "--model", str(model_dir), "--languages", "en,fr",
              "--corpus", f"files:{tmp_path}/{{lang}}.txt", "--max-tokens", "400", "--n-sentences", "9",
              "--max-length", "16", "--batch-size", "3", "--dtype", "float64", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.safetensors")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          *common, "--out", str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = Stats.load(tmp_path / "one.safetensors"), Stats.load(tmp_path / "two.safetensors")
    assert torch.equal(one.n_tokens, two.n_tokens) and one.n_tokens.tolist() == [400, 400]
    assert torch.equal(one.over_zero, two.over_zero)
    assert torch.equal(one.n_sentences, two.n_sentences)
    for k in ("act_max", "act_median", "act_min"):
        torch.testing.assert_close(one.act[k], two.act[k], rtol=1e-6, atol=1e-7)


def test_prefetch_keeps_order_and_reraises():
    from lapeval.identification.stats import _prefetch

    assert list(_prefetch(iter(range(10_000)), depth=7)) == list(range(10_000))

    def broken():
        yield 1
        raise ValueError("bad text")

    it = _prefetch(broken())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad text"):
        next(it)
    early = _prefetch(iter(range(100)), depth=2)  # consumer stops early: the producer thread ends
    assert next(early) == 0
    early.close()
