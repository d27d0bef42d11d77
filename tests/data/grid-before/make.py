"""Made with lapeval at commit 34ce007 (before the issue-22 restructure): two grids on a tiny random Llama
whose cells the restructured lapeval must reuse, every one (tests/test_architecture.py)."""
import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["CONFTEST_DIR"])
import torch
from conftest import _CORPUS, random_mask, tiny_model

from lapeval.grid import GridConfig, run_grid
from lapeval.taskdata import FACTS_DIR

os.environ["LAPEVAL_MLAMA_DIR"] = str(FACTS_DIR)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)])
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
tiny_model("llama", dtype=torch.float32).save_pretrained("tiny"); fast.save_pretrained("tiny")
random_mask(Path("mask.safetensors"), seed=3, per_lang=16, p_max_low=2.0, p_max_span=6.0)
common = dict(tasks=["lss_en", "lss_fr"], limit=3, batch_size=4, device="cpu", bootstrap_iters=0, ci_resamples=50,
              facts="builtin", targets=["en", "fr"], model_args={"max_length": 256})
one = GridConfig.from_dict(dict(model="tiny", neurons="mask.safetensors", output="one",
    interventions=["set:p_max", "scale:2@0", "zero@en;set:p_max", "add:2*p_max", {"ops": "set:p_max", "scope": "last"}], **common))
print(run_grid(one))
many = GridConfig.from_dict(dict(models=[{"name": "a", "pretrained": "tiny"}, {"name": "b", "pretrained": "tiny", "neurons": None}],
    neurons="mask.safetensors", output="many", interventions=["set:p_max@1"], **common))
print(run_grid(many))
