"""Translation metrics for the ``flores_mt_*`` tasks: corpus-level BLEU, chrF++ and spBLEU with
sacrebleu, their signatures, and the off-target rate.

* **BLEU**: ``sacrebleu.metrics.BLEU()`` with its defaults (13a tokenisation, exponential smoothing),
  computed once over the whole corpus: the same number as ``sacrebleu REF -i HYP -m bleu``. (The
  amplification paper's code averaged BLEU over batches of 32 sentences, which is not a corpus BLEU.)
* **chrF++**: ``CHRF(word_order=2)``, as ``sacrebleu -m chrf --chrf-word-order 2``.
* **spBLEU**: BLEU with the ``flores200`` SentencePiece tokeniser. sacrebleu downloads that model on
  first use; offline it works only when ``sentencepiece`` is installed and the model is already in
  sacrebleu's cache (``$SACREBLEU/models/flores200_sacrebleu_tokenizer_spm.model``). Otherwise the
  metric is reported as the string ``"unavailable: <reason>"``, never as a number.
* **off-target rate**: the share of outputs whose fastText language (:mod:`lapeval.metrics.lid`) is not
  the target language; an empty output counts as off-target.

lm-eval hands each aggregation the list of per-document items that :func:`process_results` emitted.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import lid

SPM_MODEL_NAME = "flores200_sacrebleu_tokenizer_spm.model"


def _bleu(tokenize: str | None = None):
    from sacrebleu.metrics import BLEU

    return BLEU() if tokenize is None else BLEU(tokenize=tokenize)


def _chrfpp():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def _split(items) -> tuple[list[str], list[str]]:
    refs = [str(r) for r, _ in items]
    hyps = [str(h) for _, h in items]
    return refs, hyps


def corpus_bleu(hyps: list[str], refs: list[str], tokenize: str | None = None) -> float:
    return _bleu(tokenize).corpus_score(hyps, [refs]).score


def corpus_chrfpp(hyps: list[str], refs: list[str]) -> float:
    return _chrfpp().corpus_score(hyps, [refs]).score


def spbleu_unavailable_reason() -> str | None:
    """Why spBLEU cannot be computed offline here, or None when it can."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return "sentencepiece is not installed"
    from sacrebleu.utils import SACREBLEU_DIR

    path = Path(os.environ.get("SACREBLEU", SACREBLEU_DIR)) / "models" / SPM_MODEL_NAME
    if not path.is_file():
        return f"the flores200 SentencePiece model is not in {path.parent} (sacrebleu downloads it; offline it cannot)"
    return None


# ------------------------------------------------------------------------------ lm-eval entry points
def process_results(doc: dict, results: list[str]) -> dict:
    """Per-document items: (reference, hypothesis) pairs for the corpus metrics and 0/1 off-target."""
    hyp = results[0].strip() if results else ""
    pair = (doc["target"], hyp)
    lang = lid.identify(hyp)[0]
    return {
        "bleu": pair,
        "chrfpp": pair,
        "spbleu": pair,
        "off_target": int(lang != doc["tgt_lang"]),
        "bleu_signature": 0,  # the signatures depend on the settings and the reference count only
        "chrfpp_signature": 0,
    }


def bleu(items) -> float:
    refs, hyps = _split(items)
    return corpus_bleu(hyps, refs)


def chrfpp(items) -> float:
    refs, hyps = _split(items)
    return corpus_chrfpp(hyps, refs)


class SufficientStatistics:
    """A corpus metric as per-document sufficient statistics (sacrebleu's own decomposition: n-gram matches
    and totals, lengths) and a score from their sum: score(Σ_{i ∈ S} stats_i) = corpus score of the documents
    S, for any multiset S. A bootstrap replicate then sums rows instead of re-tokenising every resampled
    corpus (how sacrebleu's paired bootstrap does it), with the same number."""

    def __init__(self, metric_factory):
        self._factory = metric_factory

    def per_document(self, items):
        """int64 [n, k]: each document's statistics."""
        import numpy as np

        refs, hyps = _split(items)
        return np.asarray(self._factory()._extract_corpus_statistics(hyps, [refs]), dtype=np.int64)

    def score(self, summed) -> float:
        """The corpus score of summed statistics (a row of k integers)."""
        return float(self._factory()._compute_score_from_stats([int(x) for x in summed]).score)


bleu.sufficient_statistics = SufficientStatistics(_bleu)
chrfpp.sufficient_statistics = SufficientStatistics(_chrfpp)


def spbleu(items):
    reason = spbleu_unavailable_reason()
    if reason:
        return f"unavailable: {reason}"
    refs, hyps = _split(items)
    return corpus_bleu(hyps, refs, tokenize="flores200")


def _signature(metric) -> str:
    metric.corpus_score(["-"], [["-"]])  # sacrebleu learns the reference count (1 here) from a first score
    return str(metric.get_signature())


def bleu_signature(items) -> str:
    return _signature(_bleu())


def chrfpp_signature(items) -> str:
    return _signature(_chrfpp())
