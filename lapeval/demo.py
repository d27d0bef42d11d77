"""``lapeval demo``: identify → intervene → evaluate on the real model, offline, in a few minutes.

1. The language neurons: the committed Gemma-3-270m mask (or, with ``--recompute``, identified again on the
   bundled text, ``lapeval/data/demo_text``: 120 project-written parallel sentences per language).
2. Where they sit: neurons per layer × language (table and PNG) and language overlaps.
3. Deactivation (Tang et al. 2024): zero language L's neurons and measure the perplexity of held-out bundled
   sentences of every language M. ΔNLL[L, M] = mean token NLL under the intervention − baseline; the
   diagonal should dominate.
4. Amplification (Rahmanisa et al. 2025): set language t's neurons to their p_max and measure
   - LSS(s, t) on the bundled parallel facts (share of facts whose log-probability margin of the t-language
     answer over the s-language answer grows), and
   - the share of greedy continuations of prompts in other languages that fastText identifies as t.
5. A markdown report with the figures, written to ``--out``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._io import write_json, write_text
from .errors import UsageError
from .instances import instances
from .paths import DATA_DIR as DATA  # noqa: F401 (re-exported)
from .paths import DEMO_TEXT, committed_mask

DEFAULT_LANGUAGES = "en,fr,id,zh,ja,ru"


@dataclass
class DemoConfig:
    out: str = "out/demo"
    model: str = "gemma-3-270m"
    mask: str | None = None
    recompute: bool = False
    languages: str = DEFAULT_LANGUAGES
    n_eval: int = 20  # held-out sentences per language for perplexity
    n_facts: int = 30  # facts per source language for LSS
    n_prompts: int = 4  # prompts per source language for steered generation
    max_gen_toks: int = 16
    batch_size: int = 16


def demo_sentences(lang: str) -> list[str]:
    path = DEMO_TEXT / f"{lang}.txt"
    if not path.is_file():
        raise UsageError(f"no bundled demo text for {lang}: the demo has {', '.join(sorted(p.stem for p in DEMO_TEXT.glob('*.txt')))}")
    return [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def split_text(lang: str, n_eval: int) -> tuple[list[str], list[str]]:
    """(identification half, evaluation sentences): the last ``n_eval`` lines are held out."""
    lines = demo_sentences(lang)
    return lines[: len(lines) - n_eval], lines[len(lines) - n_eval:]


def sentence_start(sentence: str) -> str:
    """The first half of a sentence (words, or characters in scripts written without spaces): a prompt that
    the model continues in the same sentence rather than ending it."""
    words = sentence.split()
    if len(words) >= 4:
        return " ".join(words[: (len(words) + 1) // 2])
    return sentence[: max(len(sentence) // 2, 1)]


# ---- the three measurements ------------------------------------------------------------------------
def perplexity_matrix(lm, mask, langs: list[str], texts: dict[str, list[str]], log) -> dict:
    """Mean token NLL of each language's held-out sentences: baseline, and with each language zeroed.

    Each sentence is scored as a continuation of BOS (``loglikelihood("", s)``), all languages in one
    batched call. lm-eval's ``loglikelihood_rolling`` is not used: with tokenizers that add BOS (Gemma) it
    also scores log P(BOS | BOS), about −18 nats per sentence on Gemma-3-270m, which is not text."""
    args = [("", t) for m in langs for t in texts[m]]
    owner = [m for m in langs for _ in texts[m]]
    n_tok = {m: sum(len(lm.tok_encode(t, add_special_tokens=False)) for t in texts[m]) for m in langs}
    reqs = instances("loglikelihood", args, "demo_ppl")

    def nll() -> dict[str, float]:
        lls = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
        return {m: -sum(ll for ll, o in zip(lls, owner) if o == m) / n_tok[m] for m in langs}

    lm.clear_intervention()
    t0 = time.time()
    rows = {"baseline": nll()}
    for lang in langs:
        lm.set_intervention(neurons=mask, lang=lang, mode="zero")
        rows[lang] = nll()
    lm.clear_intervention()
    delta = {l: {m: rows[l][m] - rows["baseline"][m] for m in langs} for l in langs}
    diag = [delta[l][l] for l in langs]
    off = [delta[l][m] for l in langs for m in langs if m != l]
    mean_off = sum(off) / len(off)
    log(f"perplexity matrix: {time.time() - t0:.0f}s")
    return {"nll": rows, "delta_nll": delta, "mean_diagonal": sum(diag) / len(diag), "mean_off_diagonal": mean_off,
            "diagonal_ratio": (sum(diag) / len(diag)) / mean_off if mean_off > 0 else math.inf,
            "diagonal_is_row_max": sum(delta[l][l] == max(delta[l].values()) for l in langs)}


def steering_share(lm, mask, langs: list[str], prompts: dict[str, list[str]], max_gen_toks: int, log) -> dict:
    """For each target t: share of greedy continuations of prompts in the other languages identified as t."""
    from .metrics.lid import identify

    kw = {"until": ["\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    args, src = [], []
    for s in langs:
        for p in prompts[s]:
            args.append((p, dict(kw)))
            src.append(s)
    reqs = instances("generate_until", args, "lang_steer")

    def generate() -> list[str | None]:
        return [identify(o)[0] if o.strip() else None for o in lm.generate_until(reqs, disable_tqdm=True)]

    t0 = time.time()
    lm.clear_intervention()
    base = generate()
    table, examples = {}, {}
    for t in langs:
        lm.set_intervention(neurons=mask, lang=t, mode="set", value="p_max")
        outs = lm.generate_until(reqs, disable_tqdm=True)
        steered = [identify(o)[0] if o.strip() else None for o in outs]
        idx = [i for i, s in enumerate(src) if s != t]
        table[t] = {"baseline": sum(base[i] == t for i in idx) / len(idx), "steered": sum(steered[i] == t for i in idx) / len(idx),
                    "n": len(idx)}
        examples[t] = {"prompt": args[idx[0]][0], "output": outs[idx[0]]}
    lm.clear_intervention()
    log(f"steering: {time.time() - t0:.0f}s")
    return {"share": table, "examples": examples}


def lss_sources(langs: list[str]) -> list[str]:
    """The demo languages that lapeval's bundled facts cover (the LSS sources and targets of the report)."""
    from .paths import FACTS_DIR

    have = {p.name for p in Path(FACTS_DIR).iterdir() if p.is_dir()}
    return [l for l in langs if l in have]


# ---- the report ------------------------------------------------------------------------------------
def _md_matrix(rows: list[str], cols: list[str], cell, corner: str = "") -> str:
    lines = [f"| {corner} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| **{r}** | " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def validate(cfg: DemoConfig) -> list[str]:
    """Everything checked before the model loads: sizes, languages and their bundled text, the mask, the
    output folder. Returns the languages."""
    from ._io import check_writable
    from .languages import parse_list

    for name in ("n_eval", "n_facts", "n_prompts", "max_gen_toks", "batch_size"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"--{name.replace('_', '-')} {v}: give a positive whole number")
    if cfg.n_prompts > cfg.n_eval:
        raise UsageError(f"--n-prompts {cfg.n_prompts}: the prompts come from the {cfg.n_eval} held-out sentences "
                         f"(--n-eval): give at most {cfg.n_eval}")
    langs = parse_list(cfg.languages)
    if len(langs) < 2:
        raise UsageError(f"--languages {cfg.languages}: the demo compares languages: give at least two")
    for l in langs:
        n = len(demo_sentences(l))
        if cfg.n_eval >= n:
            raise UsageError(f"--n-eval {cfg.n_eval}: the bundled {l} text has {n} sentences and identification "
                             f"needs some of them: give at most {n - 1}")
    if not cfg.recompute:
        from .masks import NeuronMask

        mask = NeuronMask.load(Path(cfg.mask) if cfg.mask else committed_mask())
        missing = [l for l in langs if l not in mask.languages]
        if missing:
            raise UsageError(f"the mask has no neurons for {', '.join(missing)}: choose --languages among "
                             f"{', '.join(mask.languages)}")
    check_writable(cfg.out, "--out", directory=True)
    return langs


def run(cfg: DemoConfig, log=print) -> Path:
    from .lm import LapeLM
    from .plot import heatmap, plot_mask

    started = time.time()
    langs = validate(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = {l: split_text(l, cfg.n_eval)[1] for l in langs}

    # 1. the neurons
    if cfg.recompute:
        from .identification.pipeline import identify

        corpus = out / "identify_text"
        corpus.mkdir(exist_ok=True)
        for l in langs:
            write_text(corpus / f"{l}.txt", "\n".join(split_text(l, cfg.n_eval)[0]) + "\n")
        mask_path = out / "mask.safetensors"
        log(f"[1/5] identifying language neurons on the bundled text ({len(langs)} languages)")
        identify(cfg.model, langs, f"files:{corpus}/{{lang}}.txt", max_tokens=10**9, batch_tokens=4096,
                 device="cpu", out=mask_path, progress=False, log=log)
    else:
        mask_path = Path(cfg.mask) if cfg.mask else committed_mask()
        log(f"[1/5] language neurons: {mask_path}")
    from .masks import NeuronMask

    mask = NeuronMask.load(mask_path)  # its languages were checked by validate(); a recomputed one has them all

    # 2. where they sit
    log("[2/5] where the neurons sit")
    plot_mask(mask, out / "neurons.png")
    summary = mask.summary()

    lm = LapeLM(pretrained=cfg.model, device="cpu", batch_size=cfg.batch_size, dtype="float32")
    # 3. deactivation
    log(f"[3/5] deactivating each language, perplexity on {cfg.n_eval} held-out sentences per language")
    ppl = perplexity_matrix(lm, mask, langs, held_out, log)
    heatmap([[ppl["delta_nll"][l][m] for m in langs] for l in langs], langs, langs, out / "deactivation.png",
            "ΔNLL per token when each language's neurons are zeroed", fmt="{:.2f}", xlabel="evaluated language",
            ylabel="deactivated language", cmap="magma")
    # 4. amplification
    log(f"[4/5] amplifying each language to p_max: LSS on {cfg.n_facts} bundled facts, steered generation")
    from .lss.matrix import lss_matrix

    lss = lss_matrix(lm, mask, lss_sources(langs), facts="builtin", limit=cfg.n_facts, log=lambda m: None)
    src = lss["sources"]
    heatmap([[lss["matrix"][s].get(t, float("nan")) for t in src] for s in src], src, src, out / "lss.png",
            "LSS(s, t): facts whose margin moves toward t", fmt="{:.2f}", xlabel="amplified language t",
            ylabel="prompt language s", cmap="viridis")
    prompts = {l: [sentence_start(s) for s in held_out[l][: cfg.n_prompts]] for l in langs}
    steer = steering_share(lm, mask, langs, prompts, cfg.max_gen_toks, log)

    # 5. report
    elapsed = time.time() - started
    results = {"config": asdict(cfg), "mask": str(mask_path), "mask_sha256": mask.sha256(), "neurons": summary,
               "perplexity": ppl, "lss": lss, "steering": steer, "seconds": round(elapsed, 1)}
    write_json(out / "results.json", results)
    report = out / "report.md"
    write_text(report, _report(cfg, mask, langs, summary, ppl, lss, steer, elapsed))
    log(f"[5/5] report: {report} ({elapsed:.0f}s)")
    return report


def _report(cfg, mask, langs, summary, ppl, lss, steer, elapsed) -> str:
    per = summary["per_language"]
    L = mask.n_layers
    tot = [sum(per[l]["per_layer"][i] for l in mask.languages) for i in range(L)]
    q = max(L // 4, 1)
    share_bottom, share_top = sum(tot[:q]) / sum(tot), sum(tot[-q:]) / sum(tot)
    src = lss["sources"]
    st = steer["share"]
    mean_base = sum(v["baseline"] for v in st.values()) / len(st)
    mean_steer = sum(v["steered"] for v in st.values()) / len(st)
    parts = [
        f"# lapeval demo: {mask.meta.get('model_id', cfg.model)}",
        "",
        f"Languages: {', '.join(langs)}. Mask: `{cfg.mask or 'committed' if not cfg.recompute else 'recomputed on the bundled text'}` "
        f"({summary['unique_neurons']} neurons, {L} layers × {mask.d_ff}). Wall time {elapsed:.0f} s.",
        "",
        "## 1–2. Where the language neurons sit",
        "",
        _md_matrix([l for l in mask.languages], ["total"] + [str(i) for i in range(L)],
                   lambda r, c: str(per[r]["total"]) if c == "total" else str(per[r]["per_layer"][int(c)]), "lang \\ layer"),
        "",
        f"Bottom quarter of the layers holds {share_bottom:.0%} of the (language, neuron) pairs, the top quarter "
        f"{share_top:.0%}.",
        "",
        "![neurons](neurons.png)",
        "",
        "## 3. Deactivation: ΔNLL per token (rows: zeroed language, columns: evaluated language)",
        "",
        _md_matrix(langs, langs, lambda r, c: (f"**{ppl['delta_nll'][r][c]:+.3f}**" if r == c else f"{ppl['delta_nll'][r][c]:+.3f}")),
        "",
        "Baseline NLL per token: " + ", ".join(f"{m} {ppl['nll']['baseline'][m]:.2f}" for m in langs) + ".",
        f"Mean diagonal ΔNLL {ppl['mean_diagonal']:.3f} vs mean off-diagonal {ppl['mean_off_diagonal']:.3f}: "
        f"ratio **{ppl['diagonal_ratio']:.1f}**; the diagonal is the row maximum in {ppl['diagonal_is_row_max']}/{len(langs)} rows.",
        "",
        "![deactivation](deactivation.png)",
        "",
        "## 4. Amplification to p_max",
        "",
        f"LSS(s, t) on {lss['n_items'][src[0]]} bundled facts per source (rows s, columns t):",
        "",
        _md_matrix(src, src, lambda r, c: "—" if r == c else f"{lss['matrix'][r][c]:.2f}"),
        "",
        f"Mean off-diagonal LSS **{lss['mean_off_diagonal']:.3f}**; per target: "
        + ", ".join(f"{t} {v:.2f}" for t, v in lss["per_target"].items()) + ".",
        "",
        "![lss](lss.png)",
        "",
        f"Greedy continuations ({cfg.max_gen_toks} tokens) of {cfg.n_prompts} bundled sentences per other language, "
        "share identified by fastText lid.176 as the amplified language:",
        "",
        "| target | baseline | steered | example (steered) |",
        "|---|---|---|---|",
    ]
    for t, v in st.items():
        ex = steer["examples"][t]["output"].strip().replace("|", "/")[:60]
        parts.append(f"| {t} | {v['baseline']:.2f} | {v['steered']:.2f} | {ex} |")
    parts += ["", f"Mean target-language share: baseline {mean_base:.2f} → steered **{mean_steer:.2f}**.", ""]
    return "\n".join(parts)
