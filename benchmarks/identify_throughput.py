"""Identification throughput on the real model, as ratios within one run (the machine is noisy).

Prints tokens/s of (a) a full forward with the LM head, (b) the bare decoder stack, (c) lapeval collection
(tokenisation + stack + statistics hooks), on the same texts and the same batches, alternating a/b/c for
several rounds and keeping each one's best; then the ratios c/b (goal >= 0.9) and c/a. Then the peak
resident memory of collection in fresh processes for two token budgets (goal: flat).

    python benchmarks/identify_throughput.py [--tokens 20000] [--rounds 3] [--memory 50000,500000]
                                             [--dtype float32] [--device cpu]

``--tiny-moe [FAMILY]`` measures a routed model instead (qwen3_moe when no family is named; the families of
``benchmarks/_tiny_moe.py``): a seeded random-weight model of a small shape with a real tokenizer's vocabulary
(``--tokenizer``), saved to a temporary folder and loaded by path as ``lapeval identify --model DIR`` would,
then the same a/b/c rounds in each experts implementation (``--impls``), so that c/b is the routed counter's
(:class:`lapeval.moe.ExpertActivationCounter`) overhead in that implementation. batched_mm gathers every
(token, expert) pair's weights and runs ~100x slower than the others on a CPU: it gets its own token budget
(``--batched-mm-tokens``). The memory comparison is for dense models only.

    python benchmarks/identify_throughput.py --tiny-moe [qwen3_moe] [--impls eager,batched_mm,grouped_mm]
                                             [--tokens 20000] [--batched-mm-tokens 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAPEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
MEMORY_LANGS = ["en", "fr", "es", "ru", "ar", "sw", "ta", "id", "zh", "ja", "pt", "de"]


def texts(n_langs: int = 1):
    from lapeval.identification import corpus

    sources = corpus.parse(f"ntrex:{SHARED / 'ntrex128'}+tico:{SHARED / 'tico19'}")
    for lang in MEMORY_LANGS[:n_langs]:
        yield from corpus.texts(sources, lang)


def load_model(model: str, dtype: str, device: str | None, random_init: bool):
    """The real model, or (``--random-init``) its architecture with random weights: throughput and memory
    do not depend on the weights' values, and only the config and tokenizer have to travel."""
    from lapeval.models import load, resolve

    if not random_init:
        return load(model, dtype, device)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve(model)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=getattr(torch, dtype))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return lm.to(device).eval(), AutoTokenizer.from_pretrained(path)


def throughput(args, model=None, tok=None, tokens: int | None = None) -> dict:
    """a/b/c/d on ``model`` (default: ``--model`` loaded here) over ``tokens`` counted tokens (``--tokens``)."""
    from lapeval.identification.stats import (
        CollectConfig,
        _batches,
        collect_language,
        sequences,
    )
    from lapeval.sites import stack_of

    if model is None:
        model, tok = load_model(args.model, args.dtype, args.device, args.random_init)
    device = next(model.parameters()).device
    cfg = CollectConfig(tokens or args.tokens, 100, 512, args.batch_tokens, args.batch_size)
    seqs = list(enumerate(sequences(tok, texts(args.langs), cfg.max_tokens, cfg.max_length)))
    batches = []
    for start in range(0, len(seqs), cfg.window):
        for b in _batches(seqs[start:start + cfg.window], cfg):
            T = len(b[0][1])
            ids = torch.full((len(b), T), tok.pad_token_id or 0)
            attn = torch.zeros((len(b), T), dtype=torch.long)
            for r, (_, s) in enumerate(b):
                ids[r, :len(s)] = torch.tensor(s)
                attn[r, :len(s)] = 1
            batches.append((ids.to(device), attn.to(device)))
    counted = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def full():
        for ids, attn in batches:
            model(input_ids=ids, attention_mask=attn, use_cache=False)

    @torch.inference_mode()
    def stack():
        for ids, attn in batches:
            stack_of(model)(input_ids=ids, attention_mask=attn, use_cache=False)

    def lapeval_collect():
        counted["n"] = collect_language(model, tok, texts(args.langs), cfg).n_tokens

    def tokenise_only():
        for _ in sequences(tok, texts(args.langs), cfg.max_tokens, cfg.max_length):
            pass

    runs = {"a_full_forward": full, "b_decoder_stack": stack, "c_lapeval_collect": lapeval_collect,
            "d_tokenise_only": tokenise_only}
    stack()  # warm-up
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t)
    n = counted["n"]  # counted tokens (the corpus may hold fewer than asked); the same batches for all three
    tps = {k: n / v for k, v in best.items()}
    return {"tokens": n, "device": str(device), "dtype": args.dtype, "tokens_per_s": tps,
            "c_over_b": tps["c_lapeval_collect"] / tps["b_decoder_stack"],
            "c_over_a": tps["c_lapeval_collect"] / tps["a_full_forward"]}


def print_throughput(r: dict) -> None:
    for k, v in r["tokens_per_s"].items():
        print(f"  {k:<20} {v:10.0f} tok/s")
    print(f"  c/b = {r['c_over_b']:.3f}   (goal >= 0.9)")
    print(f"  c/a = {r['c_over_a']:.3f}")


def tiny_moe(args) -> int:
    """a/b/c/d on the tiny routed model in each experts implementation; the summary c/b, c/a per implementation."""
    import platform

    import _tiny_moe

    from lapeval.models import load, resolve
    from lapeval.moe import IMPLEMENTATIONS, find_expert_sites, moe_meta

    impls = [x for x in args.impls.split(",") if x]
    if unknown := [x for x in impls if x not in IMPLEMENTATIONS]:
        raise SystemExit(f"--impls {','.join(unknown)}: known are {', '.join(IMPLEMENTATIONS)}")
    results = {}
    with _tiny_moe.tiny_moe_dir(args.tiny_moe, resolve(args.tokenizer), dtype=args.dtype) as path:
        model, tok = load(str(path), args.dtype, args.device)
        meta = moe_meta(find_expert_sites(model, untie=False))
        print(f"identification throughput, tiny {args.tiny_moe} (random init, seed 0): {_tiny_moe.shape()}, vocab "
              f"{len(tok)} ({args.tokenizer}'s tokenizer); routed layers {meta['layer_experts']}, shared "
              f"{meta['shared']}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}")
        for impl in impls:
            model.set_experts_implementation(impl)
            tokens = args.batched_mm_tokens if impl == "batched_mm" else args.tokens
            r = results[impl] = throughput(args, model, tok, tokens)
            print(f"experts implementation {impl}: {r['tokens']} tokens, {r['device']} {r['dtype']}, "
                  f"best of {args.rounds} rounds")
            print_throughput(r)
    print("summary  " + "   ".join(f"{impl}: c/b {r['c_over_b']:.3f}, c/a {r['c_over_a']:.3f}"
                                   for impl, r in results.items()))
    print(json.dumps({"tiny_moe": args.tiny_moe, "shape": _tiny_moe.shape(), "tokenizer": args.tokenizer,
                      "rounds": args.rounds, "batch_tokens": args.batch_tokens, "batch_size": args.batch_size,
                      "results": results}))
    return 0


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_child(tokens: int, args) -> None:
    """Run in a fresh process: collect ``tokens`` and report the peak resident memory while collecting (a
    sampling thread reads VmRSS every 20 ms, so the loader's own transient peak does not mask growth), the
    process's lifetime peak, and on a GPU the CUDA allocator's peak counted from after the load."""
    import resource
    import threading

    from lapeval.identification.stats import CollectConfig, collect_language

    model, tok = load_model(args.model, args.dtype, args.device, args.random_init)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    after_load = _rss_mib()
    peak = [after_load]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mib())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    st = collect_language(model, tok, texts(len(MEMORY_LANGS)), CollectConfig(tokens, 100, 512, args.batch_tokens, args.batch_size))
    seconds = time.perf_counter() - t
    done.set()
    th.join()
    out = {"tokens": st.n_tokens, "seconds": seconds, "rss_after_load_mib": after_load,
           "peak_rss_mib": max(peak[0], _rss_mib()),
           "lifetime_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if next(model.parameters()).device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--langs", type=int, default=1, help=f"how many of {MEMORY_LANGS} feed the throughput texts")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per forward (lapeval identify's --batch-size)")
    ap.add_argument("--memory", default="50000,500000", help="token budgets for the peak-memory comparison ('' to skip)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--random-init", action="store_true", help="the model's architecture with random weights")
    ap.add_argument("--tiny-moe", nargs="?", const="qwen3_moe", default=None, metavar="FAMILY",
                    help="a seeded random-weight routed model of benchmarks/_tiny_moe.py instead of --model "
                         "(qwen3_moe when no family is named)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="--tiny-moe: whose tokenizer (and vocabulary)")
    ap.add_argument("--impls", default="eager,batched_mm,grouped_mm", help="--tiny-moe: experts implementations")
    ap.add_argument("--batched-mm-tokens", type=int, default=2000, help="--tiny-moe: batched_mm's token budget")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory_child(args.memory_child, args)
        return 0
    if args.tiny_moe:
        return tiny_moe(args)
    r = throughput(args)
    print(f"identification throughput, {args.model}{' (random init)' if args.random_init else ''}, {r['tokens']} tokens, {r['device']} {r['dtype']}")
    print_throughput(r)
    mem = []
    for budget in [int(x) for x in args.memory.split(",") if x]:
        cmd = [sys.executable, __file__, "--memory-child", str(budget), "--dtype", args.dtype, "--model", args.model,
               "--batch-tokens", str(args.batch_tokens),
               "--batch-size", str(args.batch_size)]
        cmd += ["--random-init"] if args.random_init else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        if args.device:
            cmd += ["--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem.append(json.loads(res.stdout.strip().splitlines()[-1]))
        m = mem[-1]
        extra = f", CUDA peak {m['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in m else ""
        print(f"  peak RSS collecting {m['tokens']:>7} tokens: {m['peak_rss_mib']:7.0f} MiB "
              f"(after load {m['rss_after_load_mib']:.0f} MiB, {m['seconds']:.0f} s){extra}")
    for m in mem[1:]:
        line = f"  peak RSS ratio {m['tokens']}/{mem[0]['tokens']} tokens = {m['peak_rss_mib'] / mem[0]['peak_rss_mib']:.3f}"
        if m.get("cuda_peak_mib") and mem[0].get("cuda_peak_mib"):
            line += f", CUDA peak ratio = {m['cuda_peak_mib'] / mem[0]['cuda_peak_mib']:.3f}"
        print(line + "  (goal ~1.0)")
    print(json.dumps({**r, "memory": mem}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
