"""Is it the neurons? LAPE neurons against random-neuron controls and against DiffMean residual vectors, on LSS,
with one model load and one paired baseline (method.md §11).

    python benchmarks/controls_diffmean.py --model gemma-3-270m --neurons neuron_masks/gemma-3-270m.safetensors \
        --stats out/masks/gemma-3-270m.stats.safetensors --vectors out/gemma.vectors.safetensors \
        --languages en,fr,id,zh,ja,ru,th --limit 20 --controls 3 --alphas 1,2,4,8 --out docs/controls/gemma-3-270m

Writes OUT.json (every matrix, the effects), OUT.md (the table and its reading) and OUT.png (LSS and the
margin shift against α, the neurons and their controls as horizontal lines).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--neurons", required=True)
    ap.add_argument("--stats", help="the mask's STATS: controls matched on activation frequency")
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--languages", required=True)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--controls", type=int, default=3)
    ap.add_argument("--alphas", default="1,2,4,8")
    ap.add_argument("--vector-layers", default=None, help="layers the vectors are added at (default all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import lapeval
    from lapeval.identification.controls import control_mask
    from lapeval.lss.effects import effects
    from lapeval.lss.matrix import compute_matrix, paired_baseline
    from lapeval.lss.tasks import facts_env, load_lss_tasks
    from lapeval.masks import NeuronMask
    from lapeval.vectors import ResidualVectors

    langs = args.languages.split(",")
    alphas = [float(a) for a in args.alphas.split(",")]
    mask = NeuronMask.load(args.neurons)
    vecs = ResidualVectors.load(args.vectors)
    ctrls = [control_mask(mask, seed=k, stats=args.stats) for k in range(args.controls)]
    started = time.time()
    lm = lapeval.LapeLM(pretrained=args.model, device="cpu", batch_size=args.batch_size, dtype="float32")
    log = lambda m: print(m, flush=True)  # noqa: E731
    with facts_env("builtin"):
        tasks = load_lss_tasks(langs)
        base = paired_baseline(lm, tasks, langs, limit=args.limit, log=log)

        def run(name, **kw):
            t0 = time.time()
            r = compute_matrix(lm, tasks, langs, limit=args.limit, log=lambda m: None, baseline=base, **kw)
            log(f"{name}: LSS {r['mean_off_diagonal']:.3f} ({time.time() - t0:.0f}s)")
            return r

        real = run("neurons set:p_max", neurons=mask, mode="set", value="p_max")
        controls = [run(f"control seed {k}", neurons=c, mode="set", value="p_max") for k, c in enumerate(ctrls)]
        diffmean = {a: run(f"DiffMean α={a:g}", neurons=None, vectors=vecs, mode="add", value=a,
                           layers=args.vector_layers) for a in alphas}
    n_items = real["n_items"]
    eff = effects(real["margins"], n_items, [c["margins"] for c in controls])
    dm_eff = {a: effects(r["margins"], n_items) for a, r in diffmean.items()}
    best = max(alphas, key=lambda a: diffmean[a]["mean_off_diagonal"])  # the α its own LSS sweep picks
    vs = effects(diffmean[best]["margins"], n_items, [real["margins"]])  # DiffMean − neurons, paired over facts
    doc = {"model": args.model, "neurons": args.neurons, "neurons_sha256": mask.sha256(), "vectors": args.vectors,
           "vectors_sha256": vecs.sha256(), "languages": langs, "limit": args.limit, "n_items": n_items,
           "controls": {"k": args.controls, "matching": ctrls[0].meta["control"]["matching"] if ctrls else None},
           "neurons_lss": real["matrix"], "neurons_effects": eff,
           "control_matrices": [c["matrix"] for c in controls],
           "diffmean": {f"{a:g}": {"matrix": r["matrix"], "mean_off_diagonal": r["mean_off_diagonal"],
                                   "per_target": r["per_target"], "effects": dm_eff[a]} for a, r in diffmean.items()},
           "diffmean_alpha": best, "diffmean_minus_neurons": vs, "vector_layers": args.vector_layers or "all",
           "seconds": round(time.time() - started, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from lapeval._io import json_safe, write_json, write_text

    write_json(out.with_suffix(".json"), json_safe(doc))
    write_text(out.with_suffix(".md"), markdown(doc))
    plot(doc, out.with_suffix(".png"))
    print(markdown(doc))


def _f(x, sign=False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _ci(c) -> str:
    return "[–]" if not c or c[0] is None else f"[{c[0]:+.3f}, {c[1]:+.3f}]"


def markdown(doc: dict) -> str:
    eff, vs, best = doc["neurons_effects"], doc["diffmean_minus_neurons"], doc["diffmean_alpha"]
    dm = doc["diffmean"][f"{best:g}"]
    rows = ["| target | neurons LSS | control LSS (mean of K) | neurons − control [95 % CI] | rank of K+1 | "
            "chance-corrected | shift, nats [CI] | DiffMean LSS (α={:g}) | DiffMean − neurons [95 % CI] |".format(best),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = [*eff["per_target"], "all"]
    for t in names:
        e = eff["overall"] if t == "all" else eff["per_target"][t]
        v = vs["overall"] if t == "all" else vs["per_target"][t]
        d = dm["mean_off_diagonal"] if t == "all" else dm["per_target"][t]
        rows.append(f"| {t} | {_f(e['lss'])} | {_f(e.get('control_mean'))} | {_f(e.get('real_minus_control'), True)} "
                    f"{_ci(e.get('ci'))} | {e.get('rank', '–')}/{e.get('of', '–')} | {_f(e.get('chance_corrected'), True)} | "
                    f"{_f(e['shift'], True)} {_ci(e['shift_ci'])} | {_f(d)} | {_f(v.get('real_minus_control'), True)} "
                    f"{_ci(v.get('ci'))} |")
    sweep = ["| α | DiffMean LSS | shift, nats [CI] |", "|---:|---:|---:|"]
    for a, r in doc["diffmean"].items():
        o = r["effects"]["overall"]
        sweep.append(f"| {a} | {_f(r['mean_off_diagonal'])} | {_f(o['shift'], True)} {_ci(o['shift_ci'])} |")
    return (f"# Neurons vs controls vs DiffMean on LSS: {doc['model']}\n\n"
            f"Mask `{Path(doc['neurons']).name}` (sha256 {doc['neurons_sha256'][:12]}), set:p_max on the target's "
            f"neurons; {doc['controls']['k']} random-neuron controls ({doc['controls']['matching']}); DiffMean "
            f"residual vectors `{Path(doc['vectors']).name}` added with α at layers {doc['vector_layers']}. "
            f"Facts: lapeval's built-in parallel facts, {doc['limit']} per source, languages "
            f"{', '.join(doc['languages'])}; every run scored against one paired baseline. LSS is a sign test: a "
            f"non-specific disruption scores about 0.5, hence the controls. Intervals: paired bootstrap over facts "
            f"(1000 resamples). {doc['seconds']:.0f} s on this machine.\n\n" + "\n".join(rows)
            + "\n\nDiffMean α sweep (the α with the highest LSS is the one compared above):\n\n" + "\n".join(sweep) + "\n")


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [float(a) for a in doc["diffmean"]]
    lss = [r["mean_off_diagonal"] for r in doc["diffmean"].values()]
    shift = [r["effects"]["overall"]["shift"] for r in doc["diffmean"].values()]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(alphas, lss, "o-", label="DiffMean")
    a1.axhline(doc["neurons_effects"]["overall"]["lss"], color="C1", label="LAPE neurons set:p_max")
    if doc["neurons_effects"]["overall"].get("control_mean") is not None:
        a1.axhline(doc["neurons_effects"]["overall"]["control_mean"], color="C2", ls="--", label="random-neuron controls")
    a1.axhline(0.5, color="grey", ls=":", lw=0.8)
    a1.set(xscale="log", xlabel="α", ylabel="mean off-diagonal LSS", ylim=(0, 1), title=doc["model"])
    a1.legend(fontsize=8)
    a2.plot(alphas, shift, "o-")
    a2.axhline(doc["neurons_effects"]["overall"]["shift"], color="C1")
    a2.set(xscale="log", xlabel="α", ylabel="mean margin shift (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
