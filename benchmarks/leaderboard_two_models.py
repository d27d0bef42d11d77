"""A leaderboard of two real models, run three ways: one process, ``torchrun --nproc_per_node 2`` (gloo, CPU),
and torchrun with one rank killed mid-run then rerun — summaries compared (timings dropped; the one-process
run compared byte for byte is the one with one thread, as each rank has).

Gemma-3-270m with its committed mask and SmolLM2-135M-Instruct with its committed mask × targets fr, zh ×
(set:p_max, zero) × (LSS en/fr/zh, XCOPA zh, FLORES perplexity fr/zh, FLORES en→fr/zh), ``--limit`` docs.

    python benchmarks/leaderboard_two_models.py [--limit 8] [--out out/leaderboard] [--docs]

Writes benchmarks/results/leaderboard_two_models.{txt,json}; with ``--docs`` the leaderboard and a
screenshot of report.html (headless Chromium) under docs/leaderboard/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _lapebench as B
import yaml

TASKS = ["lss_en", "lss_fr", "lss_zh", "lapeval_xcopa_zh", "flores_ppl_fr", "flores_ppl_zh", "flores_mt_en-fr",
         "flores_mt_en-zh"]


def config(out: Path, limit: int) -> dict:
    return {"models": [{"name": "gemma-3-270m", "pretrained": "gemma-3-270m",
                        "neurons": str(B.ROOT / "neuron_masks" / "gemma-3-270m.safetensors")},
                       {"name": "smollm2-135m", "pretrained": "smollm2-135m",
                        "neurons": str(B.ROOT / "neuron_masks" / "smollm2-135m.safetensors")}],
            "tasks": TASKS, "targets": ["fr", "zh"], "interventions": ["set:p_max", "zero"], "limit": limit,
            "batch_size": 8, "device": "cpu", "output": str(out), "facts": "builtin", "bootstrap_iters": 0}


def summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    s["config"].pop("output")
    return s


def run(cmd, env, log, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.time()
    r = subprocess.run(cmd, env=env, text=True, capture_output=True, **kw)
    log.write(r.stderr[-4000:])
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return time.time() - t0, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--out", default="out/leaderboard")
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = {**os.environ, "LAPEVAL_FLORES_DIR": str(B.SHARED / "flores200_devtest"),
           "LAPEVAL_XCOPA_DIR": str(B.SHARED / "xcopa" / "data"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = open(root / "log.txt", "w", encoding="utf-8")
    figures = {}
    for name in ("one", "ranks", "killed"):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config(root / name, args.limit)))
    grid = [sys.executable, "-m", "lapeval", "grid"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m",
                "lapeval", "grid"]

    figures["one_process_s"], r = run([*grid, str(root / "one.yaml")], env, log)
    peaks = [line for line in r.stderr.splitlines() if "peak" in line and "after releasing" in line]
    figures["memory"] = peaks
    one_thread = {**env, "OMP_NUM_THREADS": "1"}  # two ranks on two cores: one thread each
    figures["two_ranks_s"], _ = run([*torchrun, str(root / "ranks.yaml")], one_thread, log)
    # the byte-for-byte comparison needs the same float arithmetic: one process with one thread too (with two
    # threads the CPU kernels sum in another order: ~1e-7 relative differences)
    (root / "one1.yaml").write_text(yaml.safe_dump(config(root / "one1", args.limit)))
    figures["one_process_1thread_s"], _ = run([*grid, str(root / "one1.yaml")], one_thread, log)

    # kill one rank mid-run (SIGKILL once it has finished a cell), then rerun the same command
    t0 = time.time()
    p = subprocess.Popen([*torchrun, str(root / "killed.yaml")], env=one_thread, text=True,
                         stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    cells = root / "killed" / "models"
    while time.time() - t0 < 1800 and p.poll() is None:
        done = list(cells.glob("*/cells/*/results.json")) if cells.exists() else []
        if len(done) >= 3:
            break
        time.sleep(2)
    os.killpg(p.pid, signal.SIGKILL)  # every rank and the launcher: a lost job
    p.wait()
    before = sorted(str(x.relative_to(root / "killed")) for x in cells.glob("*/cells/*/results.json"))
    figures["killed_after_s"] = round(time.time() - t0, 1)
    figures["cells_before_kill"] = len(before)
    figures["rerun_s"], r = run([*torchrun, str(root / "killed.yaml")], one_thread, log)
    reused = sum(int(m.split()[1]) for m in r.stderr.splitlines() if m.startswith("grid: ") and "reused" in m)
    figures["cells_reused_on_rerun"] = reused

    a, b, c = summary(root / "one1"), summary(root / "ranks"), summary(root / "killed")
    figures["two_ranks_equal_one_process"] = a == b
    figures["killed_and_rerun_equal_one_process"] = a == c
    figures["leaderboard_md_equal"] = ((root / "one1" / "leaderboard.md").read_bytes() ==
                                       (root / "ranks" / "leaderboard.md").read_bytes() ==
                                       (root / "killed" / "leaderboard.md").read_bytes() ==
                                       (root / "one" / "leaderboard.md").read_bytes())
    figures["ranking"] = a["leaderboard"]["ranking"]
    results = B.ROOT / "benchmarks" / "results"
    (results / "leaderboard_two_models.json").write_text(json.dumps(figures, indent=1) + "\n")
    text = [f"{k}: {v}" for k, v in figures.items() if k not in ("ranking", "memory")]
    text += ["memory: " + m for m in figures["memory"]]
    text += ["", (root / "one" / "leaderboard.md").read_text()]
    (results / "leaderboard_two_models.txt").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    if args.docs:
        docs = B.ROOT / "docs" / "leaderboard"
        docs.mkdir(exist_ok=True)
        for f in ("leaderboard.md", "leaderboard.csv", "report.html"):
            shutil.copyfile(root / "one" / f, docs / f)
        screenshot(docs / "report.html", docs / "report.png")


def screenshot(page: Path, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1100"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        browser.get(page.resolve().as_uri())
        browser.save_screenshot(str(png))
    finally:
        browser.quit()


if __name__ == "__main__":
    main()
