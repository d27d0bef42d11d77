"""The DiffMean α curve of a comparison grid (docs/comparison/*.yaml): LSS and the FLORES off-target rate and
chrF++ against α, with the LAPE neurons and their random-neuron controls as horizontal lines (issue 23).

    python benchmarks/comparison_plot.py docs/comparison/gemma-3-270m [--out docs/comparison/gemma-3-270m.alpha.png]

Reads the grid's summary.json (rebuild it with ``lapeval grid --summary-only --output DIR``): every
``vec:add:α[@layers]`` intervention is a point; ``set:p_max`` and its controls are the lines. The off-target
rate and chrF++ are the self-language means (amplify X, translate en→X) of cell = baseline + Δ.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

VEC = re.compile(r"vec:add:(?P<alpha>[0-9.eE+-]+)(?:@(?P<layers>[0-9+-]+))?")


def curves(summary: dict, neurons: str = "set:p_max") -> dict:
    """{"alphas", "layers", "lss", "off_target", "chrfpp", "lines": {what: {neurons, controls, baseline}}} of a
    comparison grid's summary."""
    board = next(iter(summary["leaderboard"]["models"].values()))
    fam = "flores_mt"
    prim = board["families"].get(fam, {})
    steer = board.get("steering", {}).get(fam, {})

    def level(entry: dict, op: str, key: str = "delta"):
        d = (entry.get("interventions", {}).get(op, {}).get("self", {}) or {}).get(key)
        return None if d is None or entry.get("baseline") is None else entry["baseline"] + d

    points = sorted((float(m["alpha"]), op, m["layers"]) for op in board["interventions"] if (m := VEC.fullmatch(op)))
    lss = summary.get("lss", {})
    out = {"alphas": [a for a, _, _ in points], "layers": sorted({l for _, _, l in points if l}),
           "lss": [lss.get(op, {}).get("mean_off_diagonal") for _, op, _ in points],
           "off_target": [level(steer, op) for _, op, _ in points],
           "chrfpp": [level(prim, op) for _, op, _ in points], "lines": {}}
    ctrl_lss = board.get("lss_control", {}).get(neurons)
    out["lines"]["lss"] = {"neurons": lss.get(neurons, {}).get("mean_off_diagonal"), "controls": ctrl_lss}
    for key, entry in (("off_target", steer), ("chrfpp", prim)):
        side = entry.get("interventions", {}).get(neurons, {}).get("self", {}) or {}
        base = entry.get("baseline")
        out["lines"][key] = {"neurons": level(entry, neurons), "baseline": base,
                             "controls": None if side.get("control_delta") is None or base is None
                             else base + side["control_delta"]}
    return out


def plot(c: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("lss", "off_target", "chrfpp"),
                              ("LSS (mean over s ≠ t)", "FLORES en→X off-target rate", "FLORES en→X chrF++")):
        ys = [float("nan") if y is None else y for y in c[key]]
        ax.plot(c["alphas"], ys, "o-", color="tab:green", label="DiffMean α·v")
        lines = c["lines"].get(key, {})
        for what, style, color in (("neurons", "-", "tab:blue"), ("controls", "--", "tab:gray"),
                                   ("baseline", ":", "black")):
            if lines.get(what) is not None:
                ax.axhline(lines[what], linestyle=style, color=color,
                           label={"neurons": "LAPE neurons set:p_max", "controls": "their random-neuron controls",
                                  "baseline": "no intervention"}[what])
        ax.set_xscale("log")
        ax.set_xticks(c["alphas"])
        ax.set_xticklabels([format(a, "g") for a in c["alphas"]])
        ax.set_xlabel("α" + (f" (layers {', '.join(c['layers'])})" if c["layers"] else ""))
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid", help="the comparison grid's output folder (holding summary.json)")
    ap.add_argument("--out", help="the figure (default <grid>.alpha.png beside the folder)")
    args = ap.parse_args()
    grid = Path(args.grid)
    summary = json.loads((grid / "summary.json").read_text())
    c = curves(summary)
    out = Path(args.out) if args.out else grid.with_name(grid.name + ".alpha.png")
    plot(c, out, f"{summary['config'].get('model')}: DiffMean strength α against the LAPE neurons")
    print(json.dumps(c, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
