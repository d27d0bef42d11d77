"""``lapeval search-factor``: choose the amplification value per target language by LSS (method.md §3.3, §4).

``lapeval search-factor --model gemma-3-270m --neurons MASK.safetensors --languages en,fr,zh`` runs every
candidate operation (default ``set:p_max, set:p_median, set:tt_max, add:tt_max, set:tt_p10, zero,
scale:2, scale:5, scale:10``) on each target's neurons against one baseline, and writes, beside the mask:

* ``<mask stem>.factor.json``: the per-target table of mean LSS over s ≠ t for every candidate, the best
  candidate per target and overall, every LSS matrix, and the provenance (model, mask sha256, facts, limit);
* ``<mask stem>.factor.md``: the table in markdown (best of each column in bold);
* ``<mask stem>.factor.png``: the same as a heatmap.

With ``--vectors VEC`` (residual DiffMean vectors, ``lapeval vectors``) the candidates steer the residual
stream (``--vectors VEC --sweep add:1 --alphas 0.1,0.25,0.5,1`` sweeps the strength α; beside ``--neurons``,
``vec:add:α`` terms). Ties go to the earlier candidate in the list. See :func:`lapeval.lss.factor.search_factor`.
"""

from __future__ import annotations

import sys

from .lss import add_control_args, add_run_args


def register(sub) -> None:
    p = sub.add_parser(
        "search-factor",
        help="choose the amplification value per target language by LSS (candidates × targets)",
        description="Score candidate operations (mode:value) on each target language's neurons by LSS against "
                    "one baseline; pick the best per target (highest mean LSS over sources s ≠ t) and overall. "
                    "Ties go to the earlier candidate. Writes <mask stem>.factor.json/.md/.png beside the mask.",
    )
    add_run_args(p, vectors=True)
    p.add_argument("--candidates",
                   help="comma list of interventions replacing the default list "
                        "set:p_max,set:p_median,set:tt_max,add:tt_max,set:tt_p10,zero (modes zero|set|scale|add; "
                        "values a number, p_max, p_median, tt_max, tt_p<q>, or α*p_max; terms joined by ; as in "
                        "'zero@en;set:p_max', a term without @LANGS acting on the target; ';scope:generation'; on a "
                        "mixture-of-experts mask also route:ban and route:bias:β on the target's experts)")
    p.add_argument("--scales",
                   help="scale factors appended as scale:c (multiply the target's neurons' activations); "
                        "default 2,5,10 with the default list, none with --candidates; '' for none")
    p.add_argument("--sweep", metavar="OP",
                   help="grade one operation by each --alphas factor: add:p_max → add:α*p_max, set:tt_max → "
                        "set:α*tt_max, scale → scale:α, a number multiplied (route:bias:1, vec:add:1 beside --neurons, add:1 with "
                        "--vectors alone: the DiffMean strength α); composites too ('zero@en;add:p_max'); draws the "
                        "LSS curve per target as <stem>.factor.sweep.png")
    p.add_argument("--alphas", help="the factors of --sweep, comma-separated (default 0.5,1,2,4)")
    p.add_argument("--out", help="the JSON path (default <mask stem>.factor.json beside the mask); "
                                 "the .md and .png go beside it")
    add_control_args(p)
    p.set_defaults(handler=_search)


def _search(args) -> int:
    from ..lss.factor import factor_paths, format_table, search_factor, sweep_path

    doc = search_factor(args.model, args.neurons, args.languages, args.targets, candidates=args.candidates,
                        scales=args.scales, layers=args.layers, sweep=args.sweep, alphas=args.alphas, facts=args.facts, limit=args.limit,
                        batch_size=args.batch_size, dtype=args.dtype, device=args.device, out=args.out,
                        controls=args.controls, control_stats=args.control_stats, vectors=args.vectors,
                        log=lambda m: print(m, file=sys.stderr))
    print(format_table(doc))
    if args.controls:
        for label, e in doc["effects"].items():
            o = e["overall"]
            lo, hi = o.get("ci") or (None, None)
            if o.get("control_mean") is None:  # a candidate without neuron terms: no neuron control to compare
                print(f"{label}: LSS {o['lss']:.3f} (no neuron terms, no control)")
            else:
                print(f"{label}: LSS {o['lss']:.3f}, controls {o['control_mean']:.3f}, real - control "
                      f"{o['real_minus_control']:+.3f} [{lo:+.3f}, {hi:+.3f}], rank {o['rank']}/{o['of']}"
                      if lo is not None else f"{label}: LSS {o['lss']:.3f}, controls {o['control_mean']:.3f}")
    for t, b in doc["best_per_target"].items():
        print(f"best for {t}: {b['candidate']} (LSS {b['lss']:.2f})" if b else f"best for {t}: none (no pair scored)")
    b = doc["best_overall"]
    print(f"best overall: {b['candidate']} (LSS {b['lss']:.2f})" if b else "best overall: none (no pair scored)")
    paths = list(factor_paths(args.neurons or args.vectors, args.out))
    if doc.get("sweep"):
        s = doc["sweep"]
        for t, b in s["best_alpha_per_target"].items():
            print(f"sweep {s['operation']}: best α for {t}: " + (f"{b['alpha']:g} (LSS {b['lss']:.2f})" if b else "none"))
        paths.append(sweep_path(paths[0]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
