"""Check the flores_mt_* numbers of an lm_eval run against the sacrebleu command line.

    python benchmarks/flores_vs_sacrebleu.py OUT_DIR     # an lm_eval --output_path run with --log_samples

For every flores_mt task it writes the logged hypotheses and references to files, runs
``sacrebleu REF -i HYP -m bleu chrf --chrf-word-order 2 -w 6`` and prints lm-eval's value next to the
command line's. Exit status 1 when any pair differs by more than 1e-4.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main(out_dir: str) -> int:
    results = json.loads(Path(max(glob.glob(f"{out_dir}/**/results_*.json", recursive=True))).read_text())["results"]
    exe = Path(sys.executable).parent / "sacrebleu"
    exe = exe if exe.is_file() else Path(shutil.which("sacrebleu") or "sacrebleu")
    bad = 0
    print(f"{'task':<18} {'n':>3} {'BLEU lm-eval':>13} {'BLEU cli':>10} {'chrF++ lm-eval':>15} {'chrF++ cli':>11} {'off-target':>10}")
    for f in sorted(glob.glob(f"{out_dir}/**/samples_flores_mt_*.jsonl", recursive=True)):
        task = Path(f).name[len("samples_"):].rsplit("_", 1)[0]
        rows = [json.loads(line) for line in Path(f).read_text(encoding="utf-8").splitlines()]
        with tempfile.TemporaryDirectory() as tmp:
            ref, hyp = Path(tmp, "ref.txt"), Path(tmp, "hyp.txt")
            ref.write_text("".join(r["bleu"][0] + "\n" for r in rows), encoding="utf-8")
            hyp.write_text("".join(r["bleu"][1] + "\n" for r in rows), encoding="utf-8")
            cli = {d["name"]: d for d in json.loads(subprocess.run(
                [str(exe), str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "--chrf-word-order", "2", "-w", "6"],
                capture_output=True, text=True, check=True).stdout)}
        r = results[task]
        b, c = r["bleu,none"], r["chrfpp,none"]
        ok = abs(b - cli["BLEU"]["score"]) < 1e-4 and abs(c - cli["chrF2++"]["score"]) < 1e-4
        ok &= r["bleu_signature,none"] == cli["BLEU"]["signature"]
        bad += not ok
        print(f"{task:<18} {len(rows):>3} {b:13.6f} {cli['BLEU']['score']:10.6f} {c:15.6f} {cli['chrF2++']['score']:11.6f}"
              f" {r['off_target,none']:10.3f}{'' if ok else '  MISMATCH'}")
    print("all equal" if not bad else f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
