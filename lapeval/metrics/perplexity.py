"""Perplexity of whole sentences, scored as continuations of BOS.

A ``flores_ppl_<x>`` document is one sentence s. It is scored as ``loglikelihood("", s)``: lm-eval
conditions on the model's prefix token (BOS) and sums log P(s_i | BOS, s_<i) over the sentence's tokens.
lm-eval's ``loglikelihood_rolling`` is not used because, with tokenizers that add BOS themselves (Gemma),
its first window also scores log P(BOS | BOS) — about −18 nats a sentence on Gemma-3-270m — which is not
text and moves with interventions.

Metrics, as lm-eval's rolling ones (aggregated over the corpus, weighted):
word_perplexity = exp(−Σ ll / Σ words), byte_perplexity = exp(−Σ ll / Σ bytes),
bits_per_byte = −Σ ll / (Σ bytes · ln 2).
"""

from __future__ import annotations

import re


def process_results(doc: dict, results) -> dict:
    (ll, _is_greedy), = results
    text = doc["text"]
    words = len(re.split(r"\s+", text.strip()))
    n_bytes = len(text.encode("utf-8"))
    return {"word_perplexity": (ll, words), "byte_perplexity": (ll, n_bytes), "bits_per_byte": (ll, n_bytes)}
