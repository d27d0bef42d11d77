"""Identification as a library: activation statistics (:func:`collect`), neuron selection (:func:`select`)
and both (:func:`identify`) — what ``lapeval collect`` / ``select`` / ``identify`` run, with the same
keyword names and defaults as their flags.

    stats = collect("gemma-3-270m", ["en", "fr"], "flores:../data/flores200", out="x.stats.safetensors")
    mask  = select(stats)                                  # LAPE, top_rate=0.01, ...
    mask  = identify("gemma-3-270m", ["en", "fr"], "flores:../data/flores200", out="x.safetensors")

The statistics (method.md §1.3): per language L, layer l and neuron j, over_zero = #{real tokens t with
a_{l,j}(t) > 0} and n(L) = #real tokens; for the first ``n_sentences`` texts each text's mean activation,
from which p_max, the lower median p_median and the minimum are kept. Selection: :mod:`lapeval.identification.selection`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import UsageError

COLLECT_DEFAULTS = dict(max_tokens=100_000, n_sentences=100, max_length=512, batch_tokens=8192, batch_size=64)
METHODS = ("lape", "language-activated")


def stats_meta(model_name: str, model, languages: Sequence[str], corpus: str, dtype: str, sites=None,
               site: str | None = None) -> dict:
    """The provenance a STATS file (and the masks selected from it) records: model identity, site, corpus."""
    from ..models import identity
    from ..moe import find_neuron_sites, is_expert_sites

    sites = sites or find_neuron_sites(model, site=site)
    if is_expert_sites(sites):
        return _moe_stats_meta(model_name, model, languages, corpus, dtype, sites)
    site_name = site or sites[0].name.replace(".0.", ".{layer}.", 1)
    return {
        **identity(model_name),
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(model.config, "model_type", ""),
        "n_layers": len(sites),
        "d_ff": sites[0].d_ff,
        "site": {"module": site_name, "output_of": type(sites[0].module).__name__, "gated": sites[0].gated,
                 "activated": "activation > 0", "found": "named by the user" if site else "from module structure"},
        "languages": list(languages),
        "corpus": corpus,
        "dtype": dtype,
        "counted_tokens": "real tokens of each text; padding and tokenizer prefix (BOS) excluded",
    }


def _moe_stats_meta(model_name: str, model, languages, corpus: str, dtype: str, sites) -> dict:
    """:func:`stats_meta` of a routed model: the site is the experts' non-linearity (and the shared FFNs'),
    ``d_ff`` the widest layer's E·d_e + shared widths, ``moe`` the layout (:func:`lapeval.moe.moe_meta`)."""
    from ..models import identity
    from ..moe import moe_meta

    moe = moe_meta(sites)
    first = next(s for s in sites if s.n_experts)
    act = first.act_name.replace(f".{first.layer}.", ".{layer}.", 1)
    return {
        **identity(model_name),
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(model.config, "model_type", ""),
        "n_layers": len(sites),
        "d_ff": max(moe["layer_d_ff"]),
        "site": {"module": act, "output_of": type(first.act).__name__ if first.act is not None else "_apply_gate",
                 "gated": first.gated, "activated": "activation > 0; a token not routed to expert e counts as not "
                 "activated for e's neurons", "found": "from module structure (lapeval.moe)"},
        "moe": moe,
        "languages": list(languages),
        "corpus": corpus,
        "dtype": dtype,
        "counted_tokens": "real tokens of each text; padding and tokenizer prefix (BOS) excluded",
    }


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "n_sentences" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be positive (got {v})")


def _check_rates(**rates: float) -> None:
    for name, v in rates.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise UsageError(f"{name}={v} is outside (0, 1]: pass a fraction such as 0.01 or 0.95")


def _check_mask_out(out) -> None:
    """A mask output: a ``.safetensors`` file path that can be written (checked before any computing)."""
    from .._io import check_writable

    if Path(out).suffix != ".safetensors":
        raise UsageError(f"--out {out} should end in .safetensors (mask files are safetensors)")
    check_writable(out, "--out")


def collect(model: str, languages, corpus: str, out, *, max_tokens: int = 100_000, n_sentences: int = 100,
            max_length: int = 512, batch_tokens: int = 8192, batch_size: int = 64, dtype: str = "float32",
            device: str | None = None, site: str | None = None, lid_filter: float | None = None,
            progress: bool = True, log=print):
    """Activation statistics of ``model`` on ``corpus`` for each of ``languages``, written to ``out`` (a STATS
    safetensors file; a killed run resumes from ``<out>.parts/``). Returns the :class:`~lapeval.identification.stats.Stats`.

    ``model``: a known name (``gemma-3-270m``), a local folder or a hub id; ``languages``: codes
    (``"en,zh"`` or a list); ``corpus``: a corpus spec (:mod:`lapeval.identification.corpus`, e.g.
    ``ntrex:DIR+tico:DIR`` or :func:`lapeval.paths.bundled_corpus`). ``max_tokens`` is exact per
    language; only the decoder stack runs. ``site``: the neuron site as a module path with ``{layer}``
    (``model.layers.{layer}.mlp.act_fn``) for architectures the structural finder does not know.
    ``lid_filter``: drop every text that fastText (:mod:`lapeval.metrics.lid`) identifies as another language
    with probability ≥ ``lid_filter`` (off by default, as the reference; recommended for web text, e.g. 0.5);
    the texts dropped and read per language are printed and recorded in the statistics' metadata.

    Example::

        stats = lapeval.collect("gemma-3-270m", "en,fr", lapeval.bundled_corpus(), "out/x.stats.safetensors",
                                max_tokens=5000)
        stats.over_zero.shape    # [2, 18, 2048]
    """
    from .._io import check_writable
    from ..languages import parse_list
    from ..models import check_device, check_dtype, load
    from . import corpus as corpora
    from .stats import CollectConfig
    from .stats import collect as collect_stats

    langs = parse_list(languages)
    sources = corpora.parse(corpus)
    corpora.check_languages(sources, langs)
    corpora.check_readable(sources, langs)
    _check_sizes(max_tokens=max_tokens, n_sentences=n_sentences, max_length=max_length,
                 batch_tokens=batch_tokens, batch_size=batch_size)
    if lid_filter is not None and (isinstance(lid_filter, bool) or not isinstance(lid_filter, (int, float))
                                   or not 0 < lid_filter <= 1):
        raise UsageError(f"--lid-filter {lid_filter!r}: give a probability in (0, 1], e.g. 0.5")
    check_device(device)
    check_dtype(dtype)
    check_writable(out, "--out")
    net, tok = load(model, dtype, device)
    from ..moe import find_neuron_sites

    sites = find_neuron_sites(net, site=site)
    cfg = CollectConfig(max_tokens, n_sentences, max_length, batch_tokens, batch_size)
    meta = stats_meta(model, net, langs, corpus, dtype, sites=sites, site=site)
    texts_of = lambda lang: corpora.texts(sources, lang)  # noqa: E731
    counts: dict[str, dict[str, int]] = {}
    if lid_filter is not None:
        from .corpus import lid_filtered

        meta["lid_filter"] = {"threshold": float(lid_filter), "model": "fastText (lapeval.metrics.lid)"}
        texts_of = lambda lang: lid_filtered(corpora.texts(sources, lang), lang, lid_filter, counts)  # noqa: E731
    stats = collect_stats(net, tok, langs, texts_of, Path(out), cfg, meta, progress=progress, log=log, sites=sites,
                          corpus_state=lambda lang: corpora.state(sources, lang))
    if lid_filter is not None:
        for lang in langs:
            c = counts.get(lang)
            log(f"lid filter {lid_filter:g}: {lang}: " + (f"dropped {c['dropped']} of {c['read']} texts read"
                                                         if c else "collected before (resumed): not re-read"))
        stats.meta["lid_filter"] = {**meta["lid_filter"], "texts": {l: counts.get(l) for l in langs}}
        from .stats import rank_world

        if rank_world()[0] == 0:
            stats.save(Path(out))  # the counts are known only once the texts were read
    return stats


def select(stats, *, method: str = "lape", top_rate: float = 0.01, filter_rate: float = 0.95,
           activation_bar_ratio: float = 0.95, expert_top_rate: float | None = None, out=None):
    """The language neurons of ``stats`` (a :class:`~lapeval.identification.stats.Stats` or a STATS file) as a
    :class:`~lapeval.masks.NeuronMask` (saved to ``out`` when given).

    ``method="lape"`` (Tang et al. 2024, as the reference ``identify.py``): p = over_zero / n; p̃ = p / Σ_L p;
    LAPE = −Σ_L p̃ ln p̃; neurons with p below the pooled ``filter_rate`` quantile in every language are
    dropped; the ``top_rate`` share of all neurons with the lowest LAPE is kept, each assigned to every
    language whose p exceeds the pooled ``activation_bar_ratio`` quantile. ``method="language-activated"``
    (paper 2's baseline): every neuron whose per-text mean activation is > 0 on all kept texts of L.
    The mask stores p_max / p_median when the statistics hold them.

    Routed (mixture-of-experts) statistics (``moe`` metadata): the same selection over the real neurons of
    each layer (padding left out), and language-specific experts from the routing frequencies
    (:func:`~lapeval.identification.selection.select_experts`, with ``expert_top_rate``, default
    ``top_rate``) stored beside the neurons.

    Example::

        mask = lapeval.select("out/x.stats.safetensors", top_rate=0.02)
        mask.summary()["per_language"]["fr"]["total"]
    """
    from ..masks import NeuronMask
    from .selection import (
        select_experts,
        select_language_activated,
        select_lape,
        valid_units,
    )
    from .stats import Stats

    if method not in METHODS:
        raise UsageError(f"unknown selection method {method!r}: use {' or '.join(METHODS)}")
    _check_rates(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio)
    if out is not None:
        _check_mask_out(out)
    if not isinstance(stats, Stats):
        stats = Stats.load(stats)
    moe = stats.meta.get("moe") if isinstance(stats.meta.get("moe"), dict) else None
    if expert_top_rate is not None:
        _check_rates(expert_top_rate=expert_top_rate)
    if method == "lape":
        valid = valid_units(moe["layer_d_ff"], stats.d_ff) if moe else None
        sel = select_lape(stats.over_zero, stats.n_tokens, top_rate, filter_rate, activation_bar_ratio, valid=valid)
    else:  # language-activated
        if "act_min" not in stats.act or stats.n_sentences is None or not bool((stats.n_sentences > 0).all()):
            raise UsageError("language-activated selection needs per-text mean activations (act_min) for every "
                             "language in STATS: collect with --n-sentences > 0")
        sel = select_language_activated(stats.act["act_min"])
    values = {}
    if "act_max" in stats.act and stats.n_sentences is not None and bool((stats.n_sentences > 0).all()):
        values = {"p_max": stats.act["act_max"], "p_median": stats.act["act_median"]}
    meta = {k: v for k, v in stats.meta.items() if k not in ("languages", "run_keys")}
    meta["selection"] = sel.params
    meta["n_sentences"] = dict(zip(stats.languages, (stats.n_sentences.tolist() if stats.n_sentences is not None else [])))
    experts = None
    if moe and stats.routed is not None:
        esel = select_experts(stats.routed, stats.n_tokens, moe["layer_experts"],
                              top_rate if expert_top_rate is None else expert_top_rate, filter_rate,
                              activation_bar_ratio)
        experts = esel.assigned
        meta["expert_selection"] = esel.params
    mask = NeuronMask.from_assignment(sel.assigned, stats.languages, values, meta, experts=experts)
    if out is not None:
        mask.save(out)
    return mask


def default_stats_path(out) -> Path:
    """Where :func:`identify` keeps the statistics by default: ``<out stem>.stats.safetensors`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".stats.safetensors")


def identify(model: str, languages, corpus: str, *, max_tokens: int = 100_000, out=None, stats_out=None,
             method: str = "lape", top_rate: float = 0.01, filter_rate: float = 0.95,
             activation_bar_ratio: float = 0.95, expert_top_rate: float | None = None, n_sentences: int = 100,
             max_length: int = 512,
             batch_tokens: int = 8192, batch_size: int = 64, dtype: str = "float32", device: str | None = None,
             site: str | None = None, lid_filter: float | None = None, plot: bool = False, progress: bool = True,
             log=print):
    """:func:`collect` then :func:`select`: the language neurons of ``model`` as a
    :class:`~lapeval.masks.NeuronMask`, saved to ``out`` (``.safetensors``) when given, with its statistics
    in ``stats_out`` (default beside ``out``; without ``out``, in a temporary folder). ``plot=True`` also
    writes ``<out>.png``. Under torchrun / accelerate every rank collects its share of the texts; the mask is
    returned on every rank and saved by rank 0.

    Example::

        mask = lapeval.identify("gemma-3-270m", ["en", "fr", "zh"], lapeval.bundled_corpus(), max_tokens=3000,
                                out="out/api/mask.safetensors")
        print(mask.summary()["per_language"]["zh"]["total"])
    """
    import tempfile

    from .._io import check_writable

    if out is not None:
        _check_mask_out(out)
    if method not in METHODS:
        raise UsageError(f"unknown selection method {method!r}: use {' or '.join(METHODS)}")
    if method == "language-activated" and n_sentences == 0:
        raise UsageError("--method language-activated needs per-text mean activations: give --n-sentences > 0 "
                         "(it selects neurons whose mean activation is > 0 on every one of those texts)")
    _check_rates(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio)
    if expert_top_rate is not None:
        _check_rates(expert_top_rate=expert_top_rate)
    if stats_out is not None:
        check_writable(stats_out, "--stats-out")
    if plot and out is not None:
        check_writable(Path(out).with_suffix(".png"), "the plot")
    kw = dict(max_tokens=max_tokens, n_sentences=n_sentences, max_length=max_length, batch_tokens=batch_tokens,
              batch_size=batch_size, dtype=dtype, device=device, site=site, lid_filter=lid_filter, progress=progress,
              log=log)
    if out is None and stats_out is None:
        with tempfile.TemporaryDirectory(prefix="lapeval-stats-") as tmp:
            stats = collect(model, languages, corpus, Path(tmp) / "stats.safetensors", **kw)
    else:
        stats = collect(model, languages, corpus, stats_out or default_stats_path(out), **kw)
    from .stats import rank_world

    rank = rank_world()[0]
    mask = select(stats, method=method, top_rate=top_rate, filter_rate=filter_rate,
                  activation_bar_ratio=activation_bar_ratio, expert_top_rate=expert_top_rate,
                  out=out if rank == 0 else None)
    if plot and out is not None and rank == 0:
        from ..plot import plot_mask

        plot_mask(mask, Path(out).with_suffix(".png"))
    return mask
