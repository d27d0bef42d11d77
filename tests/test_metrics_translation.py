"""Translation metrics: corpus BLEU and chrF++ equal the sacrebleu command line on the same files,
signatures, spBLEU reported as unavailable rather than faked, and the off-target rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_shared

from lapeval.metrics import translation as tr

FALLBACK = [
    ("Le chat est assis sur le tapis.", "Le chat est sur le tapis."),
    ("Il pleut depuis ce matin à Paris.", "Il pleut à Paris depuis ce matin."),
    ("Nous avons mangé une soupe chaude.", "Nous avons mangé la soupe."),
    ("La réunion commence à neuf heures.", "La réunion commence à neuf heures."),
]


def _pairs() -> list[tuple[str, str]]:
    """(reference, hypothesis): FLORES French sentences with words dropped and swapped when available."""
    try:
        flores = require_shared("flores200_devtest")
    except pytest.skip.Exception:
        return FALLBACK
    refs = (flores / "devtest" / "fra_Latn.devtest").read_text(encoding="utf-8").splitlines()[:60]
    hyps = []
    for i, r in enumerate(refs):
        w = r.split()
        hyps.append(" ".join(w[: len(w) - i % 4] if i % 3 else list(reversed(w[:3])) + w[3:]))
    hyps[7] = ""  # an empty output is legal
    return list(zip(refs, hyps))


def sacrebleu_cli(refs: list[str], hyps: list[str], tmp: Path, *extra: str) -> dict:
    (tmp / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    exe = Path(sys.executable).parent / "sacrebleu"
    out = subprocess.run([str(exe), str(tmp / "ref.txt"), "-i", str(tmp / "hyp.txt"), "-m", "bleu", "chrf",
                          "--chrf-word-order", "2", "-w", "6", *extra], capture_output=True, text=True, check=True).stdout
    return {d["name"]: d for d in json.loads(out)}


def test_bleu_and_chrfpp_equal_the_sacrebleu_cli(tmp_path):
    pairs = _pairs()
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    cli = sacrebleu_cli(refs, hyps, tmp_path)
    assert tr.bleu(pairs) == pytest.approx(cli["BLEU"]["score"], abs=1e-5)
    assert tr.chrfpp(pairs) == pytest.approx(cli["chrF2++"]["score"], abs=1e-5)
    assert tr.bleu_signature([]) == cli["BLEU"]["signature"]
    assert tr.chrfpp_signature([]) == cli["chrF2++"]["signature"]


def test_corpus_bleu_is_not_a_batch_average(tmp_path):
    pairs = _pairs()
    halves = [pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]]
    batch_mean = sum(tr.bleu(h) for h in halves) / 2
    assert tr.bleu(pairs) != pytest.approx(batch_mean, abs=1e-3)


def test_spbleu_is_unavailable_without_the_model(monkeypatch):
    monkeypatch.setattr(tr, "spbleu_unavailable_reason", lambda: "no model (test)")
    assert tr.spbleu(_pairs()) == "unavailable: no model (test)"


def test_spbleu_reason_names_the_missing_piece():
    reason = tr.spbleu_unavailable_reason()
    if reason is None:  # sentencepiece and the flores200 model are present: spBLEU is a number
        assert isinstance(tr.spbleu(_pairs()), float)
    else:
        assert "sentencepiece" in reason or "flores200" in reason


def test_process_results_and_off_target():
    doc = {"target": "Le chat dort sur le canapé.", "tgt_lang": "fr"}
    fr = tr.process_results(doc, [" Le chat dort sur le canapé du salon.\n"])
    assert fr["bleu"] == ("Le chat dort sur le canapé.", "Le chat dort sur le canapé du salon.")
    assert fr["off_target"] == 0
    assert tr.process_results(doc, ["The cat is sleeping on the sofa in the living room."])["off_target"] == 1
    assert tr.process_results(doc, [""])["off_target"] == 1


@pytest.mark.parametrize("agg", [tr.bleu, tr.chrfpp], ids=["bleu", "chrfpp"])
def test_bootstrap_from_sufficient_statistics_equals_rescoring_every_replicate(agg):
    """The grid's paired bootstrap sums per-document statistics instead of re-tokenising each resampled
    corpus: every replicate equals agg(cell*) − agg(base*) computed on the resampled documents themselves."""
    import numpy as np

    from lapeval.grid.bootstrap import bootstrap_replicates

    pairs = _pairs()
    worse = [(r, " ".join(h.split()[:-1])) for r, h in pairs]  # the 'baseline': one word fewer per output
    fast = bootstrap_replicates(worse, pairs, agg, 40, seed=7)
    idx = np.random.default_rng(7).integers(0, len(pairs), size=(40, len(pairs)))
    slow = [agg([pairs[i] for i in row]) - agg([worse[i] for i in row]) for row in idx]
    assert fast == pytest.approx(slow, abs=1e-9)
    assert len(set(np.round(fast, 6))) > 5  # the replicates differ: resampling happened
