"""Stage 2 — the Language Steering Shift (Rahmanisa et al. 2025; method.md §4) and the search over operations.

    tasks.py    the facts and the ``lss_<s>`` lm-eval tasks for any language; the requests LSS(s, t) scores
    matrix.py   the LSS matrix and per-layer LSS with one loaded model, against a paired baseline; LSS from logs
    factor.py   search-factor: which operation (and strength) steers each target language best
"""
