"""``lapeval masks show|plot|import|export``: inspect, draw and convert neuron mask files."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("masks", help="inspect, plot, import and export neuron mask files")
    ms = p.add_subparsers(dest="masks_command", metavar="ACTION", required=True)

    show = ms.add_parser("show", help="languages, neuron counts per language and layer, provenance")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="machine-readable: languages, n_layers, d_ff, unique_neurons, per_language{total, per_layer}")
    show.set_defaults(handler=_show)

    plot = ms.add_parser("plot", help="PNG: neurons per layer × language, and language-overlap Jaccard heatmap; for a "
                         "mixture-of-experts mask also <out>.experts.png, each language's experts (layer × expert)")
    plot.add_argument("file")
    plot.add_argument("--out", default=None, help="PNG path (default: FILE with .png)")
    plot.set_defaults(handler=_plot)

    imp = ms.add_parser("import", help="convert a reference *.neuron.pth (rucaibox) or lape.py output (lang-task-neuron)")
    imp.add_argument("file")
    imp.add_argument("--format", required=True, choices=["rucaibox", "lang-task-neuron"])
    imp.add_argument("--languages", default=None,
                     help="codes of the file's entries in order (default: en,zh,fr,es,vi,id,ja for rucaibox; the 18 of paper 2 for lang-task-neuron)")
    imp.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    imp.add_argument("--d-ff", type=int, default=None, help="FFN width of the model (default: from --p-max, else inferred from the largest index)")
    imp.add_argument("--model-id", default=None, help="record the model this file was made for, e.g. meta-llama/Llama-2-7b-hf")
    imp.add_argument("--p-max", default=None, help="lang-task-neuron max.pt [n_langs, n_layers, d_ff]")
    imp.add_argument("--p-median", default=None, help="lang-task-neuron median.pt [n_langs, n_layers, d_ff]")
    imp.set_defaults(handler=_import)

    ctl = ms.add_parser("control", help="a random-neuron control: per language and layer the same number of neurons, "
                        "drawn among neurons no language holds, carrying the language's values (a routed mask's "
                        "experts too, among experts no language holds)")
    ctl.add_argument("file", metavar="MASK")
    ctl.add_argument("--out", required=True, help="control mask to write (.safetensors)")
    ctl.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same file")
    ctl.add_argument("--stats", default=None, help="the STATS file of the mask's model: draw within the same "
                     "activation-frequency bin as each real neuron, and routing-frequency bin as each real expert "
                     "(recommended: else controls are mostly rare neurons)")
    ctl.add_argument("--bins", type=int, default=10, help="per-layer frequency bins with --stats (default 10)")
    ctl.set_defaults(handler=_control)

    exp = ms.add_parser("export", help="write the reference layout: a list per language of per-layer index tensors")
    exp.add_argument("file")
    exp.add_argument("--format", default="rucaibox", choices=["rucaibox", "lang-task-neuron"])
    exp.add_argument("--out", required=True, help="e.g. X.pth (lang-task-neuron also writes X.max.pt / X.median.pt)")
    exp.set_defaults(handler=_export)


def _show(args) -> int:
    """Print a mask's summary. Everything read from the file (model id, corpus, site, selection, language
    codes) may hold terminal escapes: each line goes out through :func:`~lapeval._io.printable`."""
    from .._io import dumps_printable, printable
    from ..masks import NeuronMask

    mask = NeuronMask.load(args.file)
    s = mask.summary()
    if args.json:
        print(dumps_printable({**s, "sha256": mask.sha256()}, indent=1))
        return 0
    meta = mask.meta
    sel = meta.get("selection", {})
    lines = [f"{args.file}",
             f"  model      {meta.get('model_id', '?')} ({meta.get('architecture', '?')}), {mask.n_layers} layers × {mask.d_ff}"]
    if "site" in meta:
        lines.append(f"  site       output of {meta['site'].get('module')} ({meta['site'].get('output_of')})")
    lines.append(f"  selection  {', '.join(f'{k}={v}' for k, v in sel.items())}")
    if "corpus" in meta:
        lines.append(f"  corpus     {meta['corpus']}")
    if isinstance(meta.get("control"), dict):
        ctl = meta["control"]
        lines.append(f"  control    of {str(ctl.get('of_sha256') or '?')[:16]} ({ctl.get('of')}), seed {ctl.get('seed')}; "
                     f"{ctl.get('matching')}")
        if isinstance(ctl.get("experts"), dict):
            lines.append(f"  control    experts: {ctl['experts'].get('matching')}")
    if mask.is_moe:
        moe = meta["moe"]
        lines.append(f"  experts    {moe.get('experts')} × d_expert {moe.get('d_expert')}, top-k {moe.get('top_k')}, "
                     f"shared widths per layer {moe.get('shared')}, real d_ff per layer {moe.get('layer_d_ff')}")
        lines.append(f"  flattening {moe.get('flattening')}")
    lines.append(f"  neurons    {s['unique_neurons']} unique; values: {', '.join(s['values']) or 'none'}")
    shown = {lang: printable(lang) for lang in mask.languages}
    width = max(len(l) for l in shown.values())
    lines.append(f"  {'lang':<{width}}  total  tokens   per layer")
    n_tokens = meta.get("n_tokens", {})
    for lang in mask.languages:
        pl = s["per_language"][lang]
        tokens = n_tokens.get(lang, "")
        lines.append(f"  {shown[lang]:<{width}}  {pl['total']:>5}  {tokens!s:>7}  {' '.join(f'{c:>3}' for c in pl['per_layer'])}")
    if s.get("experts"):
        lines.append(f"  {'lang':<{width}}  experts          per layer")
        for lang in mask.languages:
            if lang in s["experts"]:
                ex = s["experts"][lang]
                lines.append(f"  {shown[lang]:<{width}}  {ex['total']:>5}           "
                             f"{' '.join(f'{c:>3}' for c in ex['per_layer'])}")
    for line in lines:
        print(printable(line))
    return 0


def _control(args) -> int:
    from .._io import check_writable
    from ..identification.controls import control_mask

    check_writable(args.out, "--out")
    ctrl = control_mask(args.file, args.out, seed=args.seed, stats=args.stats, bins=args.bins)
    c = ctrl.meta["control"]
    experts = sum(len(layer) for layer, _ in ctrl.experts.values())
    also = f", {experts} experts ({c['experts']['matching']})" if "experts" in c else ""
    print(f"{args.out}: control of {args.file} (seed {c['seed']}; {c['matching']}), {ctrl.unique_neurons()} neurons{also}")
    return 0


def _plot(args) -> int:
    from ..masks import NeuronMask
    from ..plot import plot_experts, plot_mask

    mask = NeuronMask.load(args.file)
    out = Path(args.out or Path(args.file).with_suffix(".png"))
    print(plot_mask(mask, out))
    if mask.is_moe and mask.experts:
        print(plot_experts(mask, out.with_suffix(".experts.png")))
    return 0


def _import(args) -> int:
    from ..masks import import_reference

    mask = import_reference(args.file, args.format, args.languages, args.d_ff, args.p_max, args.p_median,
                            out=args.out, model_id=args.model_id)
    note = " (d_ff inferred from the largest index; pass --d-ff to record it)" if mask.meta.get("d_ff_inferred") else ""
    print(f"{args.out}: {len(mask.languages)} languages, {mask.n_layers} layers × {mask.d_ff}{note}, {mask.unique_neurons()} neurons")
    return 0


def _export(args) -> int:
    from ..masks import export_reference

    for path in export_reference(args.file, args.out, args.format):
        print(path)
    return 0
