"""Identification throughput on the real model, as ratios within one run (the machine is noisy).

Prints tokens/s of (a) a full forward with the LM head, (b) the bare decoder stack, (c) lapeval collection
(tokenisation + stack + statistics hooks), on the same texts and the same batches, alternating a/b/c for
several rounds and keeping each one's best; then the ratios c/b (goal >= 0.9) and c/a. Then the peak
resident memory of collection in fresh processes for two token budgets (goal: flat).

    python benchmarks/identify_throughput.py [--tokens 20000] [--rounds 3] [--memory 50000,500000]
                                             [--dtype float32] [--device cpu]
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


def throughput(args) -> dict:
    from lapeval.identification.stats import (
        CollectConfig,
        _batches,
        collect_language,
        sequences,
    )
    from lapeval.sites import stack_of

    model, tok = load_model(args.model, args.dtype, args.device, args.random_init)
    device = next(model.parameters()).device
    cfg = CollectConfig(args.tokens, 100, 512, args.batch_tokens, args.batch_size)
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
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        peak_memory_child(args.memory_child, args)
        return 0
    r = throughput(args)
    print(f"identification throughput, {args.model}{' (random init)' if args.random_init else ''}, {r['tokens']} tokens, {r['device']} {r['dtype']}")
    for k, v in r["tokens_per_s"].items():
        print(f"  {k:<20} {v:10.0f} tok/s")
    print(f"  c/b = {r['c_over_b']:.3f}   (goal >= 0.9)")
    print(f"  c/a = {r['c_over_a']:.3f}")
    mem = []
    for budget in [int(x) for x in args.memory.split(",") if x]:
        cmd = [sys.executable, __file__, "--memory-child", str(budget), "--dtype", args.dtype, "--model", args.model,
               "--batch-tokens", str(args.batch_tokens),
               "--batch-size", str(args.batch_size)]
        cmd += ["--random-init"] if args.random_init else []
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
