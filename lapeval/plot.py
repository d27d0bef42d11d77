"""Figures of a neuron mask: neurons per layer × language, and language overlap (Jaccard); for a
mixture-of-experts mask, each language's experts (layer × expert)."""

from __future__ import annotations

from pathlib import Path

from ._io import atomic_path
from .masks import NeuronMask


def _save(fig, out: str | Path) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return out


def plot_mask(mask: NeuronMask, out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array([mask.summary()["per_language"][l]["per_layer"] for l in mask.languages])  # [langs, layers]
    jac = mask.jaccard().numpy()
    n = len(mask.languages)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 0.35 * mask.n_layers + 0.35 * n, 0.45 * n + 2.5),
                                   gridspec_kw={"width_ratios": [max(mask.n_layers, 4), max(n, 4)]})
    im = ax1.imshow(counts, aspect="auto", cmap="viridis")
    ax1.set_xticks(range(mask.n_layers))
    ax1.set_xticklabels([str(i) for i in range(mask.n_layers)], fontsize=7)
    ax1.set_yticks(range(n))
    ax1.set_yticklabels([f"{l} ({counts[i].sum()})" for i, l in enumerate(mask.languages)])
    ax1.set_xlabel("layer")
    ax1.set_title("language-specific neurons per layer")
    for i in range(n):
        for j in range(mask.n_layers):
            if counts[i, j]:
                ax1.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                         color="white" if counts[i, j] < counts.max() * 0.6 else "black")
    fig.colorbar(im, ax=ax1, fraction=0.03)
    top = max(float(np.triu(jac, 1).max()), 1e-9) if n > 1 else 1.0
    im2 = ax2.imshow(jac, vmin=0, vmax=top, cmap="magma")
    ax2.set_xticks(range(n))
    ax2.set_xticklabels(mask.languages, rotation=90)
    ax2.set_yticks(range(n))
    ax2.set_yticklabels(mask.languages)
    ax2.set_title("overlap (Jaccard), diagonal = 1")
    for i in range(n):
        for j in range(n):
            if i != j and jac[i, j] >= 0.005:
                ax2.text(j, i, f"{jac[i, j]:.2f}", ha="center", va="center", fontsize=6,
                         color="black" if jac[i, j] > 0.7 * top else "white")
    fig.colorbar(im2, ax=ax2, fraction=0.046)
    model = mask.meta.get("model_id", "")
    fig.suptitle(title or f"{model}: {mask.unique_neurons()} neurons, {mask.n_layers} layers × {mask.d_ff}")
    return _save(fig, out)


def plot_experts(mask: NeuronMask, out: str | Path, title: str | None = None) -> Path:
    """One panel per language: layer (rows) × expert (columns), filled where the expert is one of the
    language's experts (``L.expert``), with the language's count in the panel title; experts two or more
    languages share are drawn darker in every panel that holds them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    held = mask.expert_assignment().numpy()  # [langs, layers, E]
    shared = held.sum(0) > 1
    n, n_layers, n_experts = held.shape
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(1.5 + cols * min(2 + 0.06 * n_experts, 9),
                                                                   1.0 + rows * min(1.2 + 0.12 * n_layers, 7)))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        img = np.where(held[i], np.where(shared, 2.0, 1.0), 0.0)
        ax.imshow(img, aspect="auto", cmap="Blues", vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"{mask.languages[i]} ({int(held[i].sum())} experts)", fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title or f"{mask.meta.get('model_id', '')}: language-specific experts "
                          f"({n_layers} layers × {n_experts} experts; darker: shared by languages)", fontsize=10)
    return _save(fig, out)


def heatmap(values, rows: list[str], cols: list[str], out: str | Path, title: str, fmt: str = "{:.2f}",
            xlabel: str = "", ylabel: str = "", cmap: str = "viridis", center: float | None = None) -> Path:
    """A labelled heatmap (rows × cols) with the values written in the cells; ``center`` makes a diverging map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    v = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.62 * len(cols), 1.0 + 0.5 * len(rows)))
    kw = {}
    if center is not None:
        span = float(np.nanmax(np.abs(v - center))) or 1.0
        kw = {"vmin": center - span, "vmax": center + span}
        cmap = "RdBu_r"
    im = ax.imshow(v, cmap=cmap, aspect="auto", **kw)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    lo, hi = np.nanmin(v), np.nanmax(v)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if np.isfinite(v[i, j]):
                bright = (v[i, j] - lo) / (hi - lo + 1e-12) > 0.6 if center is None else abs(v[i, j] - center) < 0.5 * (kw["vmax"] - center)
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if bright else "white")
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, out)
