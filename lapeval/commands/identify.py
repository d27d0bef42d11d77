"""``lapeval collect`` (activation statistics), ``lapeval select`` (LAPE / language-activated selection)
and ``lapeval identify`` (both)."""

from __future__ import annotations

from pathlib import Path

STATS_HELP = (
    "STATS: a safetensors file holding over_zero (int64 [n_langs, n_layers, d_ff]: tokens with activation > 0) "
    "and n_tokens (int64 [n_langs]); optional act_max / act_median / act_min (float32, same shape as over_zero: "
    "max / lower median / min over texts of the per-text mean activation). The row order is the JSON list under "
    "the safetensors metadata key 'languages'."
)


def _collect_args(p) -> None:
    p.add_argument("--model", required=True, help="gemma-3-270m, a local HF folder, or a hub id")
    p.add_argument("--languages", required=True, help="comma-separated codes, e.g. en,zh,ja,id")
    p.add_argument("--corpus", required=True,
                   help="text source(s) joined by +: wikipedia[:DATE], hf:DATASET[:CONFIG[:SPLIT[:FIELD]]], "
                        "flores:DIR[:SPLIT], ntrex:DIR, tico:DIR, files:PATTERN ({lang}/{flores} placeholders)")
    p.add_argument("--max-tokens", type=int, default=100_000, help="counted tokens per language (default 100000)")
    p.add_argument("--n-sentences", type=int, default=100, help="texts whose mean activations give p_max/p_median (default 100)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence; longer texts are chunked (default 512)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward pass (default 8192)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (default 64)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _select_args(p, stats_required: bool) -> None:
    if stats_required:
        p.add_argument("--stats", required=True, help=STATS_HELP)
    p.add_argument("--method", default="lape", choices=["lape", "language-activated"],
                   help="lape (default) or language-activated (mean activation > 0 on every kept text)")
    p.add_argument("--top-rate", type=float, default=0.01, help="share of all FFN neurons selected (default 0.01)")
    p.add_argument("--filter-rate", type=float, default=0.95, help="quantile of pooled p a neuron must exceed in some language (default 0.95)")
    p.add_argument("--activation-bar-ratio", type=float, default=0.95, help="quantile of pooled p for assigning languages (default 0.95)")


def register(sub) -> None:
    c = sub.add_parser("collect", help="activation statistics per language (over_zero, n_tokens, p_max/p_median)",
                       description=__doc__ + "\n\n" + STATS_HELP)
    _collect_args(c)
    c.add_argument("--out", required=True, help="STATS output (.safetensors); a killed run resumes from <out>.parts/")
    c.set_defaults(handler=_collect)

    s = sub.add_parser("select", help="select language neurons from STATS into a mask file", description=STATS_HELP)
    _select_args(s, stats_required=True)
    s.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    s.set_defaults(handler=_select)

    i = sub.add_parser("identify", help="collect + select: write a neuron mask file for a model")
    _collect_args(i)
    _select_args(i, stats_required=False)
    i.add_argument("--out", required=True, help="mask file to write, e.g. neuron_masks/NAME.safetensors")
    i.add_argument("--stats-out", default=None, help="where to keep the statistics (default: <out without .safetensors>.stats.safetensors)")
    i.add_argument("--plot", action="store_true", help="also write <out>.png (neurons per layer × language, overlaps)")
    i.set_defaults(handler=_identify)


def _stats_meta(args, model, tok, languages) -> dict:
    from ..models import identity
    from ..sites import find_sites

    sites = find_sites(model)
    site = sites[0].name.replace(".0.", ".{layer}.", 1)
    return {
        **identity(args.model),
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(model.config, "model_type", ""),
        "n_layers": len(sites),
        "d_ff": sites[0].d_ff,
        "site": {"module": site, "output_of": type(sites[0].module).__name__, "gated": sites[0].gated,
                 "activated": "activation > 0"},
        "languages": languages,
        "corpus": args.corpus,
        "dtype": args.dtype,
        "counted_tokens": "real tokens of each text; padding and tokenizer prefix (BOS) excluded",
    }


def run_collect(args, out: Path):
    from .. import corpus
    from ..languages import parse_list
    from ..models import load
    from ..stats import CollectConfig, collect

    languages = parse_list(args.languages)
    sources = corpus.parse(args.corpus)
    corpus.check_languages(sources, languages)
    for name in ("max_tokens", "n_sentences", "max_length", "batch_tokens", "batch_size"):
        if getattr(args, name) < (0 if name == "n_sentences" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name)})")
    model, tok = load(args.model, args.dtype, args.device)
    cfg = CollectConfig(args.max_tokens, args.n_sentences, args.max_length, args.batch_tokens, args.batch_size)
    meta = _stats_meta(args, model, tok, languages)
    return collect(model, tok, languages, lambda lang: corpus.texts(sources, lang), out, cfg, meta,
                   progress=not args.no_progress)


def _collect(args) -> int:
    run_collect(args, Path(args.out))
    print(args.out)
    return 0


def build_mask(stats, args):
    from ..lape import select_lape, select_language_activated
    from ..masks import NeuronMask

    if args.method == "lape":
        sel = select_lape(stats.over_zero, stats.n_tokens, args.top_rate, args.filter_rate, args.activation_bar_ratio)
    else:
        if "act_min" not in stats.act:
            raise ValueError("language-activated selection needs act_min in STATS: collect with --n-sentences > 0")
        sel = select_language_activated(stats.act["act_min"])
    values = {}
    if "act_max" in stats.act and stats.n_sentences is not None and bool((stats.n_sentences > 0).all()):
        values = {"p_max": stats.act["act_max"], "p_median": stats.act["act_median"]}
    meta = {k: v for k, v in stats.meta.items() if k != "languages"}
    meta["selection"] = sel.params
    meta["n_sentences"] = dict(zip(stats.languages, (stats.n_sentences.tolist() if stats.n_sentences is not None else [])))
    return NeuronMask.from_assignment(sel.assigned, stats.languages, values, meta)


def _report(mask, out) -> None:
    s = mask.summary()
    per = ", ".join(f"{l} {s['per_language'][l]['total']}" for l in mask.languages)
    print(f"{out}: {s['unique_neurons']} neurons ({per})")


def _select(args) -> int:
    from ..stats import Stats

    mask = build_mask(Stats.load(args.stats), args)
    mask.save(args.out)
    _report(mask, args.out)
    return 0


def _identify(args) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} should end in .safetensors (mask files are safetensors)")
    stats_out = Path(args.stats_out) if args.stats_out else out.with_name(out.stem + ".stats.safetensors")
    stats = run_collect(args, stats_out)
    from ..stats import rank_world

    if rank_world()[0] != 0:
        return 0
    mask = build_mask(stats, args)
    mask.save(out)
    _report(mask, out)
    if args.plot:
        from ..plot import plot_mask

        print(plot_mask(mask, out.with_suffix(".png")))
    return 0
