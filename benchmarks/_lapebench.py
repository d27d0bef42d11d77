"""Shared helpers of the ``lape`` model benchmarks: local-data task YAMLs (lm-eval's own xcopa task
definitions pointed at ../shared/data, a small generation task), a fast TaskManager, the mask to use, and
per-sample extraction. Nothing here is copied into the repo: YAMLs are written to a temp folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAPEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
COMMITTED_MASK = ROOT / "neuron_masks" / "gemma-3-270m.safetensors"


def mask_path(provisional_langs=("en", "zh", "ja", "id", "vi", "fr", "es", "ru", "th", "ta", "ar", "sw")) -> Path:
    """The committed real-model mask, or (before it exists) a random provisional one in /tmp."""
    if COMMITTED_MASK.is_file():
        return COMMITTED_MASK
    import torch

    from lapeval.masks import NeuronMask

    path = Path(tempfile.gettempdir()) / "lapeval-provisional-gemma-3-270m.safetensors"
    if not path.is_file():
        g = torch.Generator().manual_seed(0)
        n = len(provisional_langs)
        assigned = torch.rand(n, 18, 2048, generator=g) < 0.01
        vals = {"p_max": 0.5 + torch.rand(n, 18, 2048, generator=g), "p_median": 0.2 * torch.rand(n, 18, 2048, generator=g)}
        NeuronMask.from_assignment(assigned, list(provisional_langs), vals, {"provisional": True}).save(path)
    print(f"# NOTE: {COMMITTED_MASK} not found; using a RANDOM provisional mask {path}")
    return path


def write_tasks(folder: Path, xcopa_langs=("id", "vi"), gen_langs=("id", "vi"), max_gen_toks: int = 16) -> Path:
    """``lape_xcopa`` (group of lm-eval's xcopa_<l> on the local jsonl) and ``lape_gen_<l>`` (greedy
    continuation of XCOPA premises, generate_until) YAMLs; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["group: lape_xcopa", "task:"]
    for l in xcopa_langs:
        f = SHARED / "xcopa" / "data" / l / f"test.{l}.jsonl"
        lines += [f"  - task: xcopa_{l}", "    dataset_path: json", "    dataset_name: null", "    dataset_kwargs:",
                  "      data_files:", f"        test: {f}", f"        validation: {f}"]
    (folder / "lape_xcopa.yaml").write_text("\n".join(lines) + "\n")
    for l in gen_langs:
        f = SHARED / "xcopa" / "data" / l / f"test.{l}.jsonl"
        (folder / f"lape_gen_{l}.yaml").write_text(
            f"task: lape_gen_{l}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {f}\ntest_split: test\n"
            "output_type: generate_until\ndoc_to_text: \"{{premise}}\"\ndoc_to_target: \"{{choice1}}\"\n"
            f"generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n"
            "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def task_manager(folder: Path):
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    builtin = Path(lm_eval.tasks.__file__).parent / "xcopa"
    return TaskManager(include_defaults=False, include_path=[str(builtin), str(folder)])


def evaluate_samples(lm, tm, tasks: list[str], limit: int | None) -> dict[str, list]:
    """``{task: [per-doc resps]}`` (doc order) from lm-eval's evaluator, with the model's current setting."""
    from lm_eval import simple_evaluate

    res = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=0,
                          verbosity="ERROR")
    return {t: [s["resps"] for s in sorted(v, key=lambda s: s["doc_id"])] for t, v in res["samples"].items()}


def loglikelihoods(samples: dict) -> list[float]:
    return [float(r[0][0]) for t in sorted(samples) if not t.startswith("lape_gen") for doc in samples[t] for r in doc]


def generations(samples: dict) -> list[str]:
    return [doc[0][0] for t in sorted(samples) if t.startswith("lape_gen") for doc in samples[t]]


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in cells[1:]])


def dump(path: str | None, obj) -> None:
    if path:
        Path(path).write_text(json.dumps(obj, indent=1, ensure_ascii=False))
