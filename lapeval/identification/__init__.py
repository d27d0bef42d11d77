"""Stage 1 — identification: which FFN neurons are specific to a language (Tang et al. 2024; method.md §1).

    corpus.py      the text per language (bundled sentences, FLORES, files, the hub), cut into token sequences
    stats.py       one streaming pass: per language and neuron, how often act > 0, and the value statistics
    selection.py   LAPE (entropy of the normalised activation probabilities) and the language-activated rule
    pipeline.py    collect → select → mask file, the ``identify`` / ``collect`` / ``select`` of the API
"""
