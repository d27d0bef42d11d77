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
SHARED = ROOT.parent / "shared" / "data"
MEMORY_LANGS = ["en", "fr", "es", "ru", "ar", "sw", "ta", "id", "zh", "ja", "pt", "de"]


def texts(n_langs: int = 1):
    from lapeval import corpus

    sources = corpus.parse(f"ntrex:{SHARED / 'ntrex128'}+tico:{SHARED / 'tico19'}")
    for lang in MEMORY_LANGS[:n_langs]:
        yield from corpus.texts(sources, lang)


def throughput(args) -> dict:
    from lapeval.models import load
    from lapeval.sites import stack_of
    from lapeval.stats import CollectConfig, _batches, collect_language, sequences

    model, tok = load("gemma-3-270m", args.dtype, args.device)
    device = next(model.parameters()).device
    cfg = CollectConfig(args.tokens, 100, 512, args.batch_tokens, 64)
    seqs = list(enumerate(sequences(tok, texts(), cfg.max_tokens, cfg.max_length)))
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
    n = args.tokens  # counted tokens, the same for all three

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
        collect_language(model, tok, texts(), cfg)

    runs = {"a_full_forward": full, "b_decoder_stack": stack, "c_lapeval_collect": lapeval_collect}
    stack()  # warm-up
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t)
    tps = {k: n / v for k, v in best.items()}
    return {"tokens": n, "device": str(device), "dtype": args.dtype, "tokens_per_s": tps,
            "c_over_b": tps["c_lapeval_collect"] / tps["b_decoder_stack"],
            "c_over_a": tps["c_lapeval_collect"] / tps["a_full_forward"]}


def peak_memory_child(tokens: int, dtype: str, device: str) -> None:
    """Run in a fresh process: collect ``tokens`` and report peak RSS (and CUDA peak)."""
    import resource

    from lapeval.models import load
    from lapeval.stats import CollectConfig, collect_language

    model, tok = load("gemma-3-270m", dtype, device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    st = collect_language(model, tok, texts(len(MEMORY_LANGS)), CollectConfig(tokens, 100, 512, 4096, 64))
    out = {"tokens": st.n_tokens, "seconds": time.perf_counter() - t,
           "rss_after_load_mib": base / 1024, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--memory", default="50000,500000", help="token budgets for the peak-memory comparison ('' to skip)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        peak_memory_child(args.memory_child, args.dtype, args.device)
        return 0
    r = throughput(args)
    print(f"identification throughput, Gemma-3-270m, {r['tokens']} tokens, {r['device']} {r['dtype']}")
    for k, v in r["tokens_per_s"].items():
        print(f"  {k:<20} {v:10.0f} tok/s")
    print(f"  c/b = {r['c_over_b']:.3f}   (goal >= 0.9)")
    print(f"  c/a = {r['c_over_a']:.3f}")
    mem = []
    for budget in [int(x) for x in args.memory.split(",") if x]:
        cmd = [sys.executable, __file__, "--memory-child", str(budget), "--dtype", args.dtype]
        if args.device:
            cmd += ["--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem.append(json.loads(res.stdout.strip().splitlines()[-1]))
        m = mem[-1]
        extra = f", CUDA peak {m['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in m else ""
        print(f"  peak RSS collecting {m['tokens']:>7} tokens: {m['peak_rss_mib']:7.0f} MiB "
              f"(after load {m['rss_after_load_mib']:.0f} MiB, {m['seconds']:.0f} s){extra}")
    if len(mem) == 2:
        print(f"  peak memory ratio {mem[1]['tokens']}/{mem[0]['tokens']} tokens = {mem[1]['peak_rss_mib'] / mem[0]['peak_rss_mib']:.3f} (goal ~1.0)")
    print(json.dumps({**r, "memory": mem}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
