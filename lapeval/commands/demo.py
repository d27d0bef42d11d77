"""``lapeval demo``: the offline demo on the real model (see lapeval/demo.py)."""

from __future__ import annotations


def register(sub) -> None:
    from ..demo import DEFAULT_LANGUAGES, DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="identify → intervene → evaluate on Gemma-3-270m, offline; writes a report")
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--model", default=d.model)
    p.add_argument("--mask", default=None, help="mask file (default: the committed Gemma-3-270m mask)")
    p.add_argument("--recompute", action="store_true", help="identify the neurons again on the bundled text")
    p.add_argument("--languages", default=DEFAULT_LANGUAGES, help=f"default {DEFAULT_LANGUAGES}")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help="held-out sentences per language for perplexity")
    p.add_argument("--n-facts", type=int, default=d.n_facts, help="facts per source language for LSS")
    p.add_argument("--n-prompts", type=int, default=d.n_prompts, help="prompts per language for steered generation")
    p.add_argument("--max-gen-toks", type=int, default=d.max_gen_toks)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.set_defaults(handler=_demo)


def _demo(args) -> int:
    from ..demo import DemoConfig, run

    cfg = DemoConfig(args.out, args.model, args.mask, args.recompute, args.languages, args.n_eval, args.n_facts,
                     args.n_prompts, args.max_gen_toks, args.batch_size)
    report = run(cfg, log=lambda m: print(m, flush=True))
    print(f"lapeval demo: report written to {report}")
    return 0
