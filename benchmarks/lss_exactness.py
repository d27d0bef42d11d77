"""LSS exactness on the real model (issue: LSS exactly 0 when nothing changes).

On Gemma-3-270m with the committed mask and lapeval's builtin facts (en, fr, zh, ja; --limit facts per
source), for no-op interventions (scale:1, add:0, set:p_max on layer 2, which holds no neuron of any language)
and for set:p_max:

* old: the baseline scored once, in batches holding every target's objects (lapeval before the paired
  baseline), the intervened run in batches holding only (s, t);
* new: :func:`lapeval.lss_matrix` (each (s, t) against the same requests in the same batches);

then the new p_max matrix at batch sizes 1, 8 and 32, a Spanish/Swahili facts folder (tests/data/facts_es_sw,
languages MLAMA-dod-185 has no task for), and the wall time of both methods.

    python benchmarks/lss_exactness.py --json benchmarks/results/lss_exactness_gemma-3-270m.json
"""

from __future__ import annotations

import argparse
import time

import _lapebench as B

NO_OPS = [("scale", 1, None), ("add", 0, None), ("set", "p_max", "2")]


def old_matrix(lm, tasks, targets, mask, mode, value, layers, limit):
    """The former algorithm: baseline once over obj_l for l in {s} ∪ targets, then (s, t) pairs intervened."""
    from lapeval.instances import loglikelihoods
    from lapeval.lss.tasks import facts_of
    from lapeval.metrics import lss

    lm.clear_intervention()
    facts = {s: facts_of(task, limit) for s, task in tasks.items()}
    base = {}
    for s, rows in facts.items():
        need = [(p, delim + d[f"obj_{l}"]) for _, d, p, delim in rows for l in [s, *targets] if d.get(f"obj_{l}")]
        base.update(loglikelihoods(lm, need, f"lss_{s}"))
    matrix = {s: {} for s in facts}
    for t in targets:
        lm.set_intervention(neurons=mask, lang=t, mode=mode, value=value, layers=layers)
        for s, rows in facts.items():
            if s == t:
                continue
            rows_t = [(p, delim, d) for _, d, p, delim in rows if d.get(f"obj_{t}")]
            pairs = [(p, delim + d[f"obj_{l}"]) for p, delim, d in rows_t for l in (s, t) if d[f"obj_{s}"] != d[f"obj_{t}"]]
            new = loglikelihoods(lm, pairs, f"lss_{s}")
            before, after = [], []
            for p, delim, d in rows_t:
                a, b = (p, delim + d[f"obj_{t}"]), (p, delim + d[f"obj_{s}"])
                before.append(base[a] - base[b])
                after.append(new[a] - new[b] if a != b else before[-1])
            matrix[s][t] = lss.lss(before, after)
    lm.clear_intervention()
    return {"matrix": matrix, **lss.summarize(matrix)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--langs", default="en,fr,zh,ja")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()

    import lapeval
    from lapeval.lm import LapeLM
    from lapeval.lss.tasks import facts_env, load_lss_tasks

    mask = str(B.mask_path())
    langs = args.langs.split(",")
    lm = LapeLM(pretrained=args.model, device="cpu", batch_size=8)
    quiet = dict(log=lambda _: None)
    out: dict = {"model": args.model, "mask": mask, "languages": langs, "limit": args.limit, "no_ops": {}}

    def summary(res):
        cells = [v for row in res["matrix"].values() for v in row.values()]
        return {"mean_off_diagonal": res["mean_off_diagonal"], "max_cell": max(cells),
                "per_target": res["per_target"], "matrix": res["matrix"]}

    with facts_env("builtin"):
        tasks = load_lss_tasks(langs)
        for mode, value, layers in [*NO_OPS, ("set", "p_max", None)]:
            label = f"{mode}:{value}" + (f"@{layers}" if layers else "")
            t0 = time.time()
            old = old_matrix(lm, tasks, langs, mask, mode, value, layers, args.limit)
            t_old = time.time() - t0
            t0 = time.time()
            new = lapeval.lss_matrix(lm, mask, langs, facts="builtin", mode=mode, value=value, layers=layers,
                                     limit=args.limit, **quiet)
            t_new = time.time() - t0
            entry = {"old": summary(old), "new": summary(new), "seconds_old": round(t_old, 1), "seconds_new": round(t_new, 1)}
            if (mode, value, layers) in NO_OPS:
                out["no_ops"][label] = entry
            else:
                out["p_max"] = entry
            print(f"{label:<16} old mean {old['mean_off_diagonal']:.3f} (max cell {entry['old']['max_cell']:.3f}, "
                  f"{t_old:.0f}s)   new mean {new['mean_off_diagonal']:.3f} (max cell {entry['new']['max_cell']:.3f}, "
                  f"{t_new:.0f}s)", flush=True)
    print("p_max per target   old: " + ", ".join(f"{t} {v:.3f}" for t, v in out["p_max"]["old"]["per_target"].items()))
    print("p_max per target   new: " + ", ".join(f"{t} {v:.3f}" for t, v in out["p_max"]["new"]["per_target"].items()))

    matrices = {}
    for bs in (1, 8, 32):
        lm.batch_size_per_gpu = bs
        t0 = time.time()
        matrices[bs] = lapeval.lss_matrix(lm, mask, langs, facts="builtin", limit=args.limit, **quiet)["matrix"]
        print(f"batch size {bs:>2}: {time.time() - t0:.0f}s", flush=True)
    lm.batch_size_per_gpu = 8
    out["batch_sizes_identical"] = matrices[1] == matrices[8] == matrices[32]
    out["matrices_by_batch_size"] = matrices
    print(f"p_max matrices at batch sizes 1, 8, 32 identical: {out['batch_sizes_identical']}")

    es = B.ROOT / "tests" / "data" / "facts_es_sw"
    t0 = time.time()
    res = lapeval.lss_matrix(lm, mask, ["en", "es", "sw"], facts=str(es), **quiet)
    out["es_sw"] = {**summary(res), "n_items": res["n_items"], "seconds": round(time.time() - t0, 1)}
    print(f"en/es/sw facts ({res['n_items']}): mean off-diagonal {res['mean_off_diagonal']:.3f}, per target "
          + ", ".join(f"{t} {v:.3f}" for t, v in res["per_target"].items()))
    if args.json:
        from lapeval._io import write_json

        write_json(args.json, out)


if __name__ == "__main__":
    main()
