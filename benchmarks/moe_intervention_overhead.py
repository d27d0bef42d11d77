"""Forward-pass cost of interventions on a routed model, as ratios to the plain forward within one run.

On the seeded tiny routed models of ``_tiny_moe.py`` (every family, one shape), the same token batches run
plain, and under: a router bias on 2 experts of every routed layer (``route:bias:2``), a router ban of 2
(``route:ban``), a neuron ``set`` on a tenth of every layer's neurons, and the two together — uniform over
the batch, then per row (half the rows untouched, which needs each call's shape), alternating settings for
``--rounds`` rounds and keeping each one's best. The router terms run inside a torch function mode active
only during the router's forward (``lapeval.moe.edit_router``); this says what that costs.

    python benchmarks/moe_intervention_overhead.py [--families qwen3_moe,deepseek_v3] [--batch 8] [--seq 256]
                                                   [--rounds 5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import _tiny_moe as T
import torch


def settings(sites):
    from lapeval.intervention.hooks import Composite, Intervention
    from lapeval.intervention.operation import Operation

    routed = [s for s in sites if s.n_experts]
    g = torch.Generator().manual_seed(0)
    neurons = {s.layer: torch.randperm(s.d_ff, generator=g)[: s.d_ff // 10].sort().values for s in sites}
    values = {l: torch.full((j.numel(),), 0.5) for l, j in neurons.items()}

    def route(mode, value=None):
        return Intervention(Operation.parse_route(mode, value), {s.layer: torch.tensor([0, 1]) for s in routed},
                            {}, (), None, "route")

    set_ = Intervention.from_neurons(neurons, "set", "p_max", values=values)
    both = Composite((route("bias", 2.0), set_), "all")
    return {"route:bias:2": route("bias", 2.0), "route:ban": route("ban"), "set (10% neurons)": set_,
            "route:bias:2;set": both}


def measure(family: str, tok, args) -> dict:
    from lapeval.intervention.hooks import intervene
    from lapeval.moe import find_expert_sites

    model = T.build(family, tok)
    model.set_experts_implementation("grouped_mm")
    sites = find_expert_sites(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, len(tok), (args.batch, args.seq), generator=g) for _ in range(args.batches)]
    cases = {"plain": (None, None)}
    for name, iv in settings(sites).items():
        cases[name] = (iv, None)
        cases[f"{name}, per row"] = ([iv], [0 if b % 2 == 0 else -1 for b in range(args.batch)])
    best = dict.fromkeys(cases, float("inf"))
    with torch.no_grad():
        model(batches[0][:, :16])  # warm-up
        for _ in range(args.rounds):
            for name, (iv, rows) in cases.items():
                t0 = time.perf_counter()
                with intervene(model, iv, rows=rows, sites=sites):
                    for ids in batches:
                        model(ids)
                best[name] = min(best[name], time.perf_counter() - t0)
    tokens = args.batch * args.seq * args.batches
    return {name: {"tokens_per_s": tokens / t, "ratio_to_plain": best["plain"] / t} for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="qwen3_moe,deepseek_v3,gpt_oss")
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from lapeval.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(args.tokenizer))
    print(f"tiny routed models: {T.shape()}; grouped_mm experts; {args.batches} batches of {args.batch} × {args.seq} "
          f"tokens; best of {args.rounds} rounds; torch {torch.__version__}, {args.threads} threads")
    out = {}
    for family in args.families.split(","):
        out[family] = measure(family, tok, args)
        print(f"{family}:")
        for name, r in out[family].items():
            print(f"  {name:<28} {r['tokens_per_s']:8.0f} tok/s   throughput vs plain = {r['ratio_to_plain']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": T.shape(), "args": vars(args), "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
