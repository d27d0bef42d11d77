"""``lapeval grid [CONFIG.yaml] [--flag ...]``: baseline + every (intervention, target) cell on every task,
one model load (see :mod:`lapeval.grid`); flags override the YAML file's settings.

Example CONFIG.yaml::

    model: gemma-3-270m                 # known name, local folder or hub id
    model_args: {dtype: float32}        # any hf model argument
    neurons: neuron_masks/gemma-3-270m.safetensors
    targets: [en, fr, zh, ja]
    interventions: [set:p_max]          # or {mode: set, value: p_max, layers: 10-17}; zero; scale:2 ...
    tasks: [lss_en, lss_fr, lss_zh, lss_ja, lapeval_xcopa_zh, flores_ppl_en, flores_ppl_fr]
    limit: 20
    batch_size: 8
    device: cpu
    output: out/grid

Several models (each loaded once, its cells run, then released; a model without neurons: baseline only)::

    models:
      - {name: gemma, pretrained: gemma-3-270m, neurons: neuron_masks/gemma-3-270m.safetensors}
      - {name: smollm2, pretrained: smollm2-135m, neurons: neuron_masks/smollm2-135m.safetensors}

Many processes: ``torchrun --nproc_per_node 2 -m lapeval grid CONFIG.yaml`` (ranks split the cells, rank 0
writes the summary and leaderboard), or a job array of ``lapeval grid CONFIG.yaml --shard I/N`` followed
by ``lapeval grid CONFIG.yaml --summary-only``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

FLAGS = {
    "model": "model: a known name (gemma-3-270m), a local folder or a hub id",
    "model_args": "extra hf model arguments, key=value,key=value (e.g. dtype=bfloat16)",
    "neurons": "the neuron mask (.safetensors)",
    "targets": "target languages, comma-separated",
    "interventions": "interventions, comma-separated mode:value[@layers] (default set:p_max), e.g. set:p_max,zero",
    "tasks": "tasks or groups, comma-separated (lm-eval's and lapeval's)",
    "output": "output directory (default out/grid)",
    "include_path": "extra task folders, comma-separated",
    "device": "cpu (default) or cuda",
    "multiplex": "cells as batch rows: auto (GPU only), on, off",
    "facts": "LSS facts: builtin, or a folder with <lang>/test.jsonl (default $LAPEVAL_MLAMA_DIR, else the hub)",
    "lang_map": "languages of tasks no rule covers, PATTERN:LANG;... (e.g. kmmlu*:ko;xnli_va:ca), for the self/cross split",
    "self_only": "tasks or globs evaluated only self-language (baseline, and cells whose target is the task's "
                 "language), comma-separated, e.g. flores_mt_*",
}


def register(sub) -> None:
    p = sub.add_parser("grid", help="baseline + (intervention × target) cells on every task, one model load",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="grid YAML file (optional when the flags say everything)")
    for name, text in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=text)
    p.add_argument("--limit", type=float, help="documents per task (an integer) or a fraction (< 1)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--num-fewshot", dest="num_fewshot", type=int)
    p.add_argument("--bootstrap-iters", dest="bootstrap_iters", type=int, help="lm-eval's stderr bootstrap (default 1000)")
    p.add_argument("--ci-resamples", dest="ci_resamples", type=int, help="paired-bootstrap resamples of deltas (default 1000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--summary-only", action="store_true", help="only rebuild the summary of an existing output directory "
                   "(after the shards of a job array: every cell is then there)")
    p.add_argument("--shard", metavar="I/N", help="run only this job-array task's share of the cells (0-based I of N, "
                   "e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); no summary. Under torchrun / accelerate "
                   "launch the ranks split the cells by themselves")
    p.add_argument("--parallel", choices=["cells", "requests"], help="under torchrun / accelerate: ranks split the "
                   "cells (default) or lm-eval splits each cell's requests (few, large cells)")
    p.set_defaults(handler=_grid)


def _grid(args) -> int:
    from pathlib import Path

    from ..errors import InputFileError
    from ..grid.config import GridConfig
    from ..grid.run import run_grid
    from ..grid.shard import parse_shard

    if args.summary_only:
        from ..grid.report import write_summary

        out = Path(args.output or args.config or "out/grid")
        if args.config and not args.output and Path(args.config).is_file():
            out = Path(GridConfig.load(args.config).output)
        if not (out / "grid.json").is_file():
            raise InputFileError(f"{out} holds no grid.json: give the grid's output directory with --output")
        write_summary(out, log=lambda m: print(m, file=sys.stderr))
        return 0
    overrides = {k: getattr(args, k) for k in (*FLAGS, "limit", "batch_size", "num_fewshot", "bootstrap_iters",
                                                "ci_resamples", "seed", "parallel")}
    cfg = GridConfig.load(args.config, overrides)
    status = run_grid(cfg, log=lambda m: print(m, file=sys.stderr), shard=args.shard)
    ran = sum(v == "ran" for v in status.values())
    shard = parse_shard(args.shard)
    if shard is not None and not shard.leader:  # a job-array task writes no summary
        print(f"shard {shard}: {ran} cell(s) run, {len(status) - ran} reused; no summary yet: once every shard has "
              f"finished, run: lapeval grid --summary-only --output {shlex.quote(str(cfg.output))}")
        return 0
    print(f"{Path(cfg.output) / 'summary.md'}  ({ran} cell(s) run, {len(status) - ran} reused)")
    return 0
