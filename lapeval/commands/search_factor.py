"""``lapeval search-factor``: choose the amplification value per target language by LSS (method.md §3.3, §4).

``lapeval search-factor --model gemma-3-270m --neurons MASK.safetensors --languages en,fr,zh`` runs every
candidate operation (default ``set:p_max, set:p_median, set:tt_max, add:tt_max, set:tt_p10, zero,
scale:2, scale:5, scale:10``) on each target's neurons against one baseline, and writes, beside the mask:

* ``<mask stem>.factor.json``: the per-target table of mean LSS over s ≠ t for every candidate, the best
  candidate per target and overall, every LSS matrix, and the provenance (model, mask sha256, facts, limit);
* ``<mask stem>.factor.md``: the table in markdown (best of each column in bold);
* ``<mask stem>.factor.png``: the same as a heatmap.

Ties go to the earlier candidate in the list. See :mod:`lapeval.factor`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .lss import add_run_args


def register(sub) -> None:
    p = sub.add_parser(
        "search-factor",
        help="choose the amplification value per target language by LSS (candidates × targets)",
        description="Score candidate operations (mode:value) on each target language's neurons by LSS against "
                    "one baseline; pick the best per target (highest mean LSS over sources s ≠ t) and overall. "
                    "Ties go to the earlier candidate. Writes <mask stem>.factor.json/.md/.png beside the mask.",
    )
    add_run_args(p)
    p.add_argument("--candidates",
                   help="comma list of mode:value (or zero) replacing the default list "
                        "set:p_max,set:p_median,set:tt_max,add:tt_max,set:tt_p10,zero (modes zero|set|scale|add; "
                        "values a number, p_max, p_median, tt_max, tt_p<q>)")
    p.add_argument("--scales",
                   help="scale factors appended as scale:c (multiply the target's neurons' activations); "
                        "default 2,5,10 with the default list, none with --candidates; '' for none")
    p.add_argument("--out", help="the JSON path (default <mask stem>.factor.json beside the mask); "
                                 "the .md and .png go beside it")
    p.set_defaults(handler=_search)


def _paths(neurons: str, out: str | None) -> tuple[Path, Path, Path]:
    if out:
        js = Path(out)
    else:
        mask = Path(neurons)
        stem = mask.stem if mask.suffix == ".safetensors" else mask.name
        js = mask.with_name(f"{stem}.factor.json")
    return js, js.with_suffix(".md"), js.with_suffix(".png")


def _lss_sources() -> set[str]:
    from .eval import tasks_path

    return {p.stem[len("lss_"):] for p in tasks_path().rglob("lss_*.yaml")}


def _search(args) -> int:
    from .. import __version__, factor, languages
    from ..cli import UsageError
    from ..intervene import parse_layers
    from ..masks import NeuronMask

    # ---- everything that can be checked without the model or the data
    sources = languages.parse_list(args.languages)
    targets = languages.parse_list(args.targets) if args.targets else sources
    known = _lss_sources()
    missing = [s for s in sources if s not in known]
    if missing:
        raise UsageError(f"no lss task for {', '.join(missing)}: source languages must be among {', '.join(sorted(known))}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give a positive number of facts per source")
    if args.scales is not None:
        scales = factor.parse_scales(args.scales)
    else:
        scales = list(factor.DEFAULT_SCALES) if args.candidates is None else []
    candidates = factor.build_candidates(args.candidates, scales)
    mask = NeuronMask.load(Path(args.neurons).expanduser())
    factor.check_candidates(candidates, mask, targets)
    parse_layers(args.layers, mask.n_layers)
    js, md, png = _paths(args.neurons, args.out)

    # ---- the facts (before the model: a target without objects is refused cheaply)
    from .lss import _facts, facts_env, load_lape, load_lss_tasks

    started = time.time()
    with facts_env(args.facts) as facts:
        tasks = load_lss_tasks(sources)
        rows = {s: _facts(task, args.limit) for s, task in tasks.items()}
        for t in targets:
            if not any(d.get(f"obj_{t}") not in (None, "") for s, rs in rows.items() if s != t for _, d, _, _ in rs):
                raise UsageError(f"target {t}: the facts ({facts}) carry no {t} objects for the other sources, so LSS "
                                 f"cannot score it: drop it from --targets")
        if not any(s != t for s in sources for t in targets):
            raise UsageError("every (source, target) pair is on the diagonal: give at least two languages")

        # ---- the search
        lm = load_lape(args.model, args.batch_size, args.dtype, args.device)
        result = factor.search_factor(lm, tasks, targets, mask, candidates, layers=args.layers, limit=args.limit,
                                      log=lambda m: print(m, file=sys.stderr))
    _write(args, result, mask, facts, __version__, time.time() - started, js, md, png)
    return 0


def _write(args, result: dict, mask, facts: str, version: str, seconds: float, js: Path, md: Path, png: Path) -> None:
    from .. import factor, models
    from .._io import write_json, write_text

    doc = {
        "model": args.model,
        **models.identity(args.model),
        "neurons": str(args.neurons),
        "neurons_sha256": mask.sha256(),
        "sources": result["sources"],
        "targets": result["targets"],
        "candidates": result["candidates"],
        "table": result["table"],
        "overall": result["overall"],
        "best_per_target": result["best_per_target"],
        "best_overall": result["best_overall"],
        "tie_rule": result["tie_rule"],
        "statistic": "per target: mean LSS over sources s != t; overall: mean over all off-diagonal (s, t)",
        "layers": args.layers or "all",
        "limit": args.limit,
        "n_items": result["n_items"],
        "facts": facts,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "lapeval_version": version,
        "seconds": round(seconds, 1),
        "matrices": result["matrices"],
    }
    title = f"LSS factor search: {args.model}, mask {Path(args.neurons).name}"
    write_json(js, factor._nan_to_none(doc))
    write_text(md, factor.format_markdown(result, title))
    factor.plot_table(result, png, title=f"{args.model}: mean LSS over s ≠ t")

    print(factor.format_table(result))
    for t, b in result["best_per_target"].items():
        print(f"best for {t}: {b['candidate']} (LSS {b['lss']:.2f})" if b else f"best for {t}: none (no pair scored)")
    b = result["best_overall"]
    print(f"best overall: {b['candidate']} (LSS {b['lss']:.2f})" if b else "best overall: none (no pair scored)")
    print(f"wrote {js}, {md}, {png}")
