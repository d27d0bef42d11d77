"""How often one 3-cell grid (baseline + set:p_max on two targets, multiplexed) parses its intervention spec and
reads / hashes its mask file — the issue-22 figures, for this checkout or an older one:

    CONFTEST_DIR=tests PYTHONPATH=. python benchmarks/grid_spec_path.py MODEL_DIR
    CONFTEST_DIR=OLD/tests PYTHONPATH=OLD python benchmarks/grid_spec_path.py MODEL_DIR   # a checkout before

MODEL_DIR: a small local model (e.g. the tiny Llama that tests/data/grid-before/make.py saves as ``tiny``).
Counts: ``parse_term`` on text / mappings / tuples and ``Operation.parse`` calls from the configuration to the
last cell; ``safe_open`` and ``sha256_file`` calls on the mask file.
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.environ["CONFTEST_DIR"])
from conftest import random_mask

import lapeval._io as io_
import lapeval.masks as masks

reads, hashes = [], []
ro, rh = masks.safe_open, io_.sha256_file
masks.safe_open = lambda p, *a, **k: (reads.append(Path(p).name), ro(p, *a, **k))[1]
def h(p, *a, **k):
    hashes.append(Path(p).name); return rh(p, *a, **k)
masks.sha256_file = h
io_.sha256_file = h
try:
    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid
except ImportError:
    from lapeval.grid import GridConfig, run_grid
from lapeval.paths import FACTS_DIR

try:
    import lapeval.intervention.operation as op_mod
except ImportError:
    import lapeval.operation as op_mod
parses = []
real_term = op_mod.parse_term
def counting_term(spec, *a, **k):
    if isinstance(spec, (str, dict, tuple)):
        parses.append(spec)
    return real_term(spec, *a, **k)
op_mod.parse_term = counting_term
real_op = op_mod.Operation.parse.__func__
def counting_op(cls, *a, **k):
    parses.append(("Operation.parse", a))
    return real_op(cls, *a, **k)
op_mod.Operation.parse = classmethod(counting_op)
os.environ["LAPEVAL_MLAMA_DIR"] = str(FACTS_DIR)
mask = random_mask(Path(tempfile.mkdtemp()) / "m.safetensors", seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
reads.clear(); hashes.clear()
cfg = GridConfig.from_dict(dict(model=sys.argv[1], neurons=str(mask), targets=["en", "fr"], tasks=["lss_en", "lss_fr"], limit=2,
    batch_size=4, device="cpu", output=tempfile.mkdtemp(), bootstrap_iters=0, ci_resamples=20, interventions=["set:p_max"], multiplex="on", model_args={"max_length": 256}))
st = run_grid(cfg, log=lambda m: None)
print("spec parses (parse_term on text + Operation.parse):", len(parses))
print(st, "mask reads:", reads.count("m.safetensors"), "hashes:", hashes.count("m.safetensors"))
