"""Compare ``lapeval lss score`` (from logs) with ``lapeval lss matrix`` (in process), and the logged
baseline margins with a direct transformers scoring of the same prompts (no lm-eval).

    python benchmarks/lss_direct.py PRETRAINED OUT     # OUT as written by lss_logs_vs_direct.sh
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lapeval.metrics import lss


def logprob(model, tok, context: str, continuation: str) -> float:
    whole = tok(context + continuation)["input_ids"]
    n = len(tok(context)["input_ids"])
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([whole])).logits.double(), -1)[0]
    return float(sum(lp[i - 1, whole[i]] for i in range(n, len(whole))))


def main(pretrained: str, out: str, n_direct: int = 8) -> int:
    out = Path(out)
    logs = json.loads((out / "from_logs.json").read_text())["matrix"]
    inproc = json.loads((out / "in_process.json").read_text())["matrix"]
    print("cell      from logs  in process")
    same = True
    for s, row in logs.items():
        for t, v in row.items():
            same &= abs(v - inproc[s][t]) < 1e-12
            print(f"{s}->{t}:  {v:9.4f}  {inproc[s][t]:10.4f}")
    print("logs == in-process:", same)
    base = lss.read_samples(out / "base")
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(pretrained)
    worst = 0.0
    for s, docs in base.items():
        rows = [json.loads(l) for f in sorted((out / "base").rglob(f"samples_lss_{s}_*.jsonl")) for l in f.read_text().splitlines()]
        for rec in rows[:n_direct]:
            doc = rec["doc"]
            p = lss.prompt(doc)
            own = logprob(model, tok, p, " " + doc[f"obj_{s}"])
            for t, m in rec["margin"].items():
                worst = max(worst, abs(m - (logprob(model, tok, p, " " + doc[f"obj_{t}"]) - own)))
    print(f"largest |logged margin - direct margin| over {n_direct} facts per source: {worst:.2e}")
    return 0 if same and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
