"""Seeded random-weight routed (mixture-of-experts) models for benchmarks, small enough for a laptop CPU.

One shape for every family, chosen for its ratios rather than its size: hidden 256, 4 decoder layers, 16
experts of width 128 chosen top-4 (Qwen3-30B-A3B: hidden 2048, 48 layers, 128 experts of width 768, top-8:
d_expert / hidden 0.375 there, 0.5 here), the vocabulary of a real tokenizer so that the texts tokenise as
they would for a real model. The families and their routing features are those ``tests/test_moe.py`` checks
(a shared expert, a dense first layer, transposed experts with a gate function), at this shape.

    with tiny_moe_dir("qwen3_moe", tokenizer_path) as path:   # a folder lapeval.models.load takes
        model, tok = lapeval.models.load(str(path), "float32", "cpu")
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

HIDDEN, LAYERS, HEADS, KV_HEADS = 256, 4, 4, 2
EXPERTS, TOP_K, D_EXPERT, D_DENSE = 16, 4, 128, 512

# family -> (config class, its own arguments at the shape above)
FAMILIES = {
    "qwen3_moe": ("Qwen3MoeConfig", {
        "intermediate_size": D_DENSE, "moe_intermediate_size": D_EXPERT, "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K, "head_dim": HIDDEN // HEADS}),
    "qwen2_moe": ("Qwen2MoeConfig", {  # a shared expert
        "intermediate_size": D_DENSE, "moe_intermediate_size": D_EXPERT, "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K, "shared_expert_intermediate_size": D_DENSE}),
    "mixtral": ("MixtralConfig", {
        "intermediate_size": D_EXPERT, "num_local_experts": EXPERTS, "num_experts_per_tok": TOP_K}),
    "olmoe": ("OlmoeConfig", {
        "intermediate_size": D_EXPERT, "num_experts": EXPERTS, "num_experts_per_tok": TOP_K}),
    "deepseek_v3": ("DeepseekV3Config", {  # a dense first layer, a shared expert, grouped routing, MLA
        "intermediate_size": D_DENSE, "moe_intermediate_size": D_EXPERT, "n_routed_experts": EXPERTS,
        "n_shared_experts": 1, "num_experts_per_tok": TOP_K, "n_group": 4, "topk_group": 2,
        "first_k_dense_replace": 1, "q_lora_rank": 128, "kv_lora_rank": 64, "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 48, "v_head_dim": 64, "num_key_value_heads": HEADS, "rope_scaling": None}),
    "gpt_oss": ("GptOssConfig", {  # transposed experts, the activation inside _apply_gate
        "intermediate_size": D_EXPERT, "num_local_experts": EXPERTS, "num_experts_per_tok": TOP_K,
        "head_dim": HIDDEN // HEADS}),
}


def shape() -> str:
    return (f"hidden {HIDDEN}, {LAYERS} layers, {EXPERTS} experts x d_expert {D_EXPERT}, top-{TOP_K}, "
            f"dense/shared width {D_DENSE}")


def build(family: str, tokenizer, seed: int = 0, dtype: str = "float32"):
    """The seeded random-weight model of ``family`` with ``tokenizer``'s vocabulary and special ids."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    cls_name, kwargs = FAMILIES[family]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        **{"num_key_value_heads": KV_HEADS, **kwargs}, max_position_embeddings=1024, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    if family == "deepseek_v3":  # a non-zero correction bias, so that the router's choice depends on it
        for layer in model.model.layers[config.first_k_dense_replace:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


@contextlib.contextmanager
def tiny_moe_dir(family: str, tokenizer_path: str, seed: int = 0, dtype: str = "float32"):
    """A temporary folder holding the model of :func:`build` and the tokenizer of ``tokenizer_path``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    with tempfile.TemporaryDirectory(prefix=f"tiny-{family}-") as d:
        build(family, tok, seed, dtype).save_pretrained(d)
        tok.save_pretrained(d)
        yield Path(d)
