"""How many of lm-eval's tasks ``lapeval.languages.task_language`` resolves, per family.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/task_language_coverage.py \
        [--doc docs/task-languages.md] [--json FILE] [--samples N]

Walks lm-eval's whole task index (``TaskManager().all_tasks``: tasks, groups and tags; about 10-25 s to
build), resolves every name with its indexed config's metadata, and prints one row per family (the folder
under ``lm_eval/tasks``; tags have none and form one row): names, leaf tasks, resolved names, distinct
languages, a sample, and for what is left unresolved the most frequent reason. It also checks every
resolved leaf task against its ``dataset_name`` where that reads as a language (``AR_XY``, ``arb_Latn``,
``German``): a disagreement is printed and makes the exit status 1. ``--samples N`` prints N resolved
names per family with their languages (to check a rule by eye). ``--doc`` rewrites the markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

from lapeval import languages

# why a whole family names no language in its tasks (the resolver only says "no language in the name")
NOTES = {
    "kmmlu": "Korean-only benchmark, no code in its names (lang_map=kmmlu*:ko)",
    "cmmlu": "Chinese-only benchmark, no code in its names (lang_map=cmmlu*:zh)",
    "ceval": "Chinese-only benchmark, no code in its names (lang_map=ceval*:zh)",
    "tmmluplus": "Traditional-Chinese-only benchmark, no code in its names (lang_map=tmmluplus*:zh)",
    "tmlu": "Traditional-Chinese-only benchmark, no code in its names (lang_map=tmlu*:zh)",
    "zhoblimp": "Chinese-only benchmark, no code in its names (lang_map=zhoblimp*:zh)",
    "aclue": "Classical-Chinese benchmark, no code in its names (lang_map=aclue*:lzh)",
    "arabic_leaderboard_complete": "Arabic-only benchmark, no code in its names (lang_map=arabic_*:ar)",
    "arabic_leaderboard_light": "Arabic-only benchmark, no code in its names (lang_map=arabic_*:ar)",
    "arabicmmlu": "Arabic-only benchmark, no code in its names (lang_map=arabicmmlu*:ar)",
    "aradice": "Arabic dialects spelled egy/lev/msa (not ISO 639: egy is Ancient Egyptian, msa is Malay)",
    "noreval": "Norwegian benchmark mixing Bokmål, Nynorsk and translation pairs under task-specific names",
    "evalita_llm": "Italian-only benchmark, no code in its names (lang_map=evalita*:it)",
    "kobest": "Korean-only benchmark, no code in its names (lang_map=kobest*:ko)",
    "haerae": "Korean-only benchmark, no code in its names (lang_map=haerae*:ko)",
    "libra": "Russian-only benchmark, no code in its names (lang_map=libra*:ru)",
    "darija_bench": "Moroccan Arabic (ary) tasks and ary↔ar/en translation pairs under task-specific names",
    "turkishmmlu": "Turkish-only benchmark (lang_map=turkishmmlu*:tr)",
    "greekmmlu": "Greek-only benchmark (lang_map=greekmmlu*:el)",
    "mlqa": "the cross-lingual pairs (context ≠ question language); the 7 same-language pairs resolve",
    "translation": "translation pairs (wmt, iwslt): two languages, none of them the task's",
    "catalan_bench": "Catalan tasks under task-specific names (cabreu, parafraseja, ...); the shared families resolve",
    "basque_bench": "Basque tasks under task-specific names and FLORES pairs; the shared families resolve",
    "galician_bench": "Galician tasks under task-specific names and FLORES pairs; the shared families resolve",
    "spanish_bench": "Spanish tasks under task-specific names and FLORES pairs; the shared families resolve",
    "portuguese_bench": "Portuguese tasks under task-specific names and FLORES pairs",
    "afrobench": "FLORES/NTREX pairs, translate-test and cross-lingual AfriQA (deliberately None); task-specific names",
}


def _family(entry) -> str:
    """The folder under lm_eval/tasks an index entry comes from; tags (no file) form one family."""
    if entry.yaml_path is None:
        return "(tags)"
    parts = Path(entry.yaml_path).parts
    return parts[parts.index("tasks") + 1] if "tasks" in parts else "(other)"


def _dataset_language(cfg: dict, family: str | None) -> str | None:
    """The language a config's ``dataset_name`` spells on its own, when it is nothing but a code or name
    (read with the quirks of the rule that resolved the task: XL-Sum's ``pidgin`` is Nigerian Pidgin)."""
    name = cfg.get("dataset_name") if isinstance(cfg, dict) else None
    if not isinstance(name, str) or not name.strip():
        return None
    for rule in languages.FAMILY_RULES:
        if rule.family == family and name.lower() in rule.quirks:
            return languages.normalize(rule.quirks[name.lower()])
    try:
        return languages.normalize(name)
    except languages.LanguageError:
        return None


def walk(tm) -> list[dict]:
    """One record per index name: family, kind, resolution, dataset-name language."""
    out = []
    for name, entry in sorted(tm.task_index.items()):
        cfg = entry.cfg if isinstance(entry.cfg, dict) else {}
        meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else None
        r = languages.resolve_task(name, meta)
        out.append({"name": name, "family": _family(entry), "kind": entry.kind.name, "language": r.language,
                    "rule": r.family, "source": r.source, "reason": r.reason,
                    "dataset_language": _dataset_language(cfg, r.family) if entry.kind.name in ("TASK", "PY_TASK") else None})
    return out


_NO_NAME = "no language in the task's name or metadata"
_GROUPS = "groups and tags over several languages or none"


def _why(record: dict) -> str:
    """A record's reason, groups and tags that name no language told apart from tasks."""
    if record["reason"] == _NO_NAME and record["kind"] in ("GROUP", "TAG"):
        return _GROUPS
    return record["reason"]


def table(records: list[dict]) -> list[dict]:
    """Per family: names, leaf tasks, resolved (all / leaf), languages, sample, unresolved reason."""
    fams = collections.defaultdict(list)
    for r in records:
        fams[r["family"]].append(r)
    rows = []
    for fam, recs in fams.items():
        leaf = [r for r in recs if r["kind"] in ("TASK", "PY_TASK")]
        done = [r for r in recs if r["language"]]
        left = [r for r in recs if not r["language"]]
        reasons = collections.Counter(_why(r) for r in left)
        reason = NOTES.get(fam) or "; ".join(f"{why} ({n})" for why, n in reasons.most_common(2))
        if not done and not NOTES.get(fam) and set(reasons) <= {_NO_NAME, _GROUPS}:
            reason = "monolingual or language-agnostic: no language in the task names"
        rows.append({"family": fam, "names": len(recs), "tasks": len(leaf), "resolved": len(done),
                     "resolved_tasks": sum(1 for r in leaf if r["language"]),
                     "languages": len({r["language"] for r in done}),
                     "sample": next((f"{r['name']} → {r['language']}" for r in done if r["kind"] == "TASK"), ""),
                     "unresolved": len(left), "why": reason if left else ""})
    rows.sort(key=lambda r: (-r["resolved"], -r["names"], r["family"]))
    return rows


def disagreements(records: list[dict]) -> list[dict]:
    return [r for r in records if r["language"] and r["dataset_language"] and r["language"] != r["dataset_language"]]


def markdown(rows: list[dict], records: list[dict], seconds: float) -> str:
    import lm_eval

    n, leaf = len(records), [r for r in records if r["kind"] in ("TASK", "PY_TASK")]
    done, done_leaf = sum(1 for r in records if r["language"]), sum(1 for r in leaf if r["language"])
    fams_done = [r for r in rows if r["resolved"]]
    L = ["# The language of lm-eval's tasks", "",
         "What `lapeval.languages.task_language` (and so `--model lape ... lang=self` and the grid's "
         "self/cross split) finds for every name in lm-eval "
         f"{getattr(lm_eval, '__version__', '?')}'s task index. Written by "
         "`benchmarks/task_language_coverage.py` (index built in "
         f"{seconds:.0f} s); rerun it after changing a rule.", "",
         f"**{done} of {n} names resolved** ({done_leaf} of {len(leaf)} leaf tasks; groups and tags "
         f"are the rest), in {len(fams_done)} of {len(rows)} families, "
         f"{len({r['language'] for r in records if r['language']})} distinct languages.", "",
         "Order of resolution: `lang_map` (model argument / grid key), the task config's "
         "`metadata.lapeval_language`, lapeval's own task names, then one rule per lm-eval family "
         "(`lapeval.languages.FAMILY_RULES`). A task's language is the language of its documents "
         "(`mgsm_en_cot_de` → de: English exemplars around German questions, as INCLUDE's `few_shot_en`). "
         "Deliberately None: translation pairs (`wmt16-de-en`, FLORES/NTREX pairs), translate-test "
         "(English translations), cross-lingual pairs (`mlqa_de_en`, AfriQA). Every resolved leaf task was "
         "checked against its `dataset_name` where that spells a language on its own: "
         f"{len(disagreements(records))} disagreements.", "",
         "Tasks no rule covers can be given a language with `lang_map=` (`lang_map=kmmlu*:ko;cmmlu*:zh`; "
         "`none` for no language).", "",
         "| family | names | leaf tasks | resolved | languages | sample | unresolved | why unresolved |",
         "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        L.append(f"| {r['family']} | {r['names']} | {r['tasks']} | {r['resolved']} | {r['languages']} | "
                 f"{r['sample'].replace('|', '/')} | {r['unresolved']} | {r['why']} |")
    L.append("")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--doc", help="write the markdown table here (docs/task-languages.md)")
    ap.add_argument("--json", help="write every name's resolution as JSON")
    ap.add_argument("--samples", type=int, default=0, help="print N resolved names per family")
    args = ap.parse_args()
    from lm_eval.tasks import TaskManager

    t0 = time.time()
    tm = TaskManager()
    seconds = time.time() - t0
    records = walk(tm)
    rows = table(records)
    print(f"index: {len(tm.all_tasks)} names in {seconds:.1f} s")
    print(f"{'family':<32} {'names':>6} {'tasks':>6} {'resolved':>8} {'langs':>5}  why unresolved")
    for r in rows:
        print(f"{r['family']:<32} {r['names']:>6} {r['tasks']:>6} {r['resolved']:>8} {r['languages']:>5}  {r['why']}")
    done = sum(1 for r in records if r["language"])
    print(f"resolved: {done} of {len(records)} names")
    if args.samples:
        rng = random.Random(0)
        by_fam = collections.defaultdict(list)
        for r in records:
            if r["language"]:
                by_fam[r["family"]].append(r)
        for fam, recs in sorted(by_fam.items()):
            pick = rng.sample(recs, min(args.samples, len(recs)))
            print(f"  {fam}: " + ", ".join(f"{r['name']}→{r['language']}" for r in pick))
    bad = disagreements(records)
    for r in bad:
        print(f"DISAGREES: {r['name']} → {r['language']}, but its dataset_name reads as {r['dataset_language']}")
    if args.doc:
        Path(args.doc).write_text(markdown(rows, records, seconds), encoding="utf-8")
        print(f"wrote {args.doc}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
