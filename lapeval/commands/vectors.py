"""``lapeval vectors --stats STATS --out VEC``: DiffMean residual vectors from the activation statistics."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("vectors", help="DiffMean residual-stream vectors per language and layer, from a STATS file "
                       "(steer with lape vectors=VEC,lang=fr,mode=add,value=4)")
    p.add_argument("--stats", required=True, help="the STATS file of lapeval collect / identify")
    p.add_argument("--out", required=True, help="vectors file to write (.safetensors)")
    p.set_defaults(handler=_vectors)


def _vectors(args) -> int:
    from .._io import check_writable
    from ..identification.vectors import diffmean_vectors

    check_writable(args.out, "--out")
    vec = diffmean_vectors(args.stats, out=args.out)
    norms = ", ".join(f"{l} {float(vec.vectors[l].norm(dim=1).mean()):.2f}" for l in vec.languages)
    print(f"{args.out}: {len(vec.languages)} languages × {vec.n_layers} layers × hidden {vec.hidden}; "
          f"mean ‖v‖ per layer: {norms}")
    return 0
