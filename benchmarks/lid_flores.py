"""fastText (lid.176.ftz, or $LAPEVAL_LID_MODEL) accuracy on FLORES devtest, per language of the table.

    LAPEVAL_FLORES_DIR=../shared/data/flores200_devtest python benchmarks/lid_flores.py [--out FILE]

Prints one row per language (accuracy over the 1012 devtest sentences, and the most frequent wrong
labels) and marks the weak ones (accuracy < 0.95).
"""

from __future__ import annotations

import argparse
import collections
import sys

from lapeval import languages
from lapeval._io import write_json
from lapeval.metrics import lid
from lapeval.taskdata import flores_sentences

WEAK = 0.95


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the table as JSON")
    args = ap.parse_args()
    rows = {}
    print(f"model: {lid.model_path()}")
    print(f"{'lang':<5} {'flores':<9} {'acc':>6}  confusions")
    for lang in languages.LANGUAGES.values():
        sents = flores_sentences(lang.code)
        preds = [lid.identify(s)[0] for s in sents]
        acc = sum(p == lang.code for p in preds) / len(preds)
        wrong = collections.Counter(p for p in preds if p != lang.code).most_common(3)
        rows[lang.code] = {"flores": lang.flores, "n": len(sents), "accuracy": round(acc, 4), "confusions": dict(wrong)}
        mark = "  WEAK" if acc < WEAK else ""
        print(f"{lang.code:<5} {lang.flores:<9} {acc:6.3f}  {', '.join(f'{k} {v}' for k, v in wrong)}{mark}")
    weak = [c for c, r in rows.items() if r["accuracy"] < WEAK]
    print(f"weak (< {WEAK}): {', '.join(weak) or 'none'}")
    if args.out:
        write_json(args.out, {"model": str(lid.model_path()), "split": "devtest", "languages": rows, "weak": weak})
    return 0


if __name__ == "__main__":
    sys.exit(main())
