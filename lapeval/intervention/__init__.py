"""Stage 1 — intervention: what is done to the identified neurons during a forward (method.md §2–3, §10).

    operation.py   the one spec grammar: ``MODE[:VALUE][@LANGS][@LAYERS]`` terms joined by ``;``, a scope
    setting.py     a spec resolved against a mask: languages, routing per request, provenance, cache identity
    hooks.py       the forward hooks that apply a setting to a model's activation sites (torch)

``operation`` and ``setting`` import no torch; only ``hooks`` does.
"""
