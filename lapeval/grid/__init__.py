"""Stage 3 — grids: baseline and (intervention × target) cells on any lm-eval tasks, for one model or many.

    config.py       the YAML / flags → :class:`GridConfig`, its cells (target, Spec) and their keys
    run.py          one model load, the cells (multiplexed as batch rows), lm-eval's ``evaluate`` per cell
    shard.py        cells over torchrun ranks or job-array shards
    memory.py       per-model memory figures
    bootstrap.py    paired bootstrap intervals of deltas to the baseline
    report.py       the summary: self- vs cross-language, LSS and perplexity matrices, heatmaps
    leaderboard.py  models ranked by what their language neurons do
"""
