"""``lapeval collect`` (activation statistics), ``lapeval select`` (LAPE / language-activated selection)
and ``lapeval identify`` (both)."""

from __future__ import annotations

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
    p.add_argument("--site", default=None, help="the neuron site as a module path with {layer}, e.g. "
                   "model.layers.{layer}.mlp.act_fn; on a mixture-of-experts model the block holding router and experts, "
                   "e.g. model.layers.{layer}.mlp (default: found from the module structure)")
    p.add_argument("--lid-filter", type=float, default=None, metavar="P",
                   help="drop texts that fastText identifies as another language with probability >= P (off by "
                   "default, as the reference; 0.5 recommended for web text); counts printed and kept in the STATS")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _select_args(p, stats_required: bool) -> None:
    if stats_required:
        p.add_argument("--stats", required=True, help=STATS_HELP)
    p.add_argument("--method", default="lape", choices=["lape", "language-activated"],
                   help="lape (default) or language-activated (mean activation > 0 on every kept text)")
    p.add_argument("--top-rate", type=float, default=0.01, help="share of all FFN neurons selected (default 0.01)")
    p.add_argument("--filter-rate", type=float, default=0.95, help="quantile of pooled p a neuron must exceed in some language (default 0.95)")
    p.add_argument("--activation-bar-ratio", type=float, default=0.95, help="quantile of pooled p for assigning languages (default 0.95)")
    p.add_argument("--expert-top-rate", type=float, default=None,
                   help="mixture-of-experts models: share of all routed experts selected as language-specific "
                   "(LAPE on routing frequencies; default: --top-rate)")


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


def _collect_kwargs(args) -> dict:
    return dict(max_tokens=args.max_tokens, n_sentences=args.n_sentences, max_length=args.max_length,
                batch_tokens=args.batch_tokens, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                site=args.site, lid_filter=args.lid_filter, progress=not args.no_progress)


def _select_kwargs(args) -> dict:
    return dict(method=args.method, top_rate=args.top_rate, filter_rate=args.filter_rate,
                activation_bar_ratio=args.activation_bar_ratio, expert_top_rate=args.expert_top_rate)


def _report(mask, out) -> None:
    s = mask.summary()
    per = ", ".join(f"{l} {s['per_language'][l]['total']}" for l in mask.languages)
    print(f"{out}: {s['unique_neurons']} neurons ({per})")
    if "experts" in s:
        per = ", ".join(f"{l} {s['experts'][l]['total']}" for l in mask.languages if l in s["experts"])
        print(f"{out}: language-specific experts ({per or 'none: the statistics hold no routed counts'})")


def _collect(args) -> int:
    from ..identification.pipeline import collect

    collect(args.model, args.languages, args.corpus, args.out, **_collect_kwargs(args))
    print(args.out)
    return 0


def _select(args) -> int:
    from ..identification.pipeline import select

    mask = select(args.stats, out=args.out, **_select_kwargs(args))
    _report(mask, args.out)
    return 0


def _identify(args) -> int:
    from ..identification.pipeline import identify
    from ..identification.stats import rank_world

    mask = identify(args.model, args.languages, args.corpus, out=args.out, stats_out=args.stats_out, plot=args.plot,
                    **_collect_kwargs(args), **_select_kwargs(args))
    if rank_world()[0] == 0:
        _report(mask, args.out)
        if args.plot:
            from pathlib import Path

            print(Path(args.out).with_suffix(".png"))
    return 0
