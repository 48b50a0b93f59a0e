"""Export to transformers: GPT-2's switches load as GPT2LMHeadModel, the modern ones as Llama or
Qwen3, and transformers' logits equal ours in fp32 on real text."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
import torch

from model.export import architecture, export_hf
from model.gpt import GPT, GPT2, MODERN, GPTConfig
from pipeline.tokenize import TokenizeConfig, sample_texts, train_tokenizer

transformers = pytest.importorskip("transformers")

SHAPE = {"block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64}
CASES = {
    "gpt2": {**GPT2},
    "gpt2-bias": {**GPT2, "bias": True},
    "llama": {**MODERN, "qk_norm": False},
    "qwen3": {**MODERN},
    "llama-tied": {**MODERN, "qk_norm": False, "tie_embeddings": True},
    # 512 ids in 600 rows: the export cuts the padded rows off, transformers sees 512 ids
    "gpt2-padded": {**GPT2, "vocab_multiple": 100},
    "qwen3-padded": {**MODERN, "vocab_multiple": 100},
}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    from tests.fixtures.data import require_data

    with gzip.open(require_data("text/gutenberg-top-authors-subset.jsonl.gz"), "rt") as f:
        text = json.loads(f.readline())["text"][:200_000]
    config = TokenizeConfig(vocab_size=512, sample_chars=200_000)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(sample_texts([pa.table({"text": [text]})], config), config).save(str(path))
    return {"text": text, "tokenizer": str(path)}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_transformers_logits_match_ours(case, book, tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **SHAPE, **CASES[case])).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so a mix-up cannot hide behind ones and zeros
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
        model.lm_head.weight[512:] = 1.0  # padded rows that would win every argmax if they were exported
    config = export_hf(model, book["tokenizer"], str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(hf).__name__ == config["architectures"][0] == architecture(model.config)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok(book["text"][5000:9000], return_tensors="pt")["input_ids"][:, :64]
    assert ids.shape[1] == 64
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    c = model.config  # GPT-2 always has biases: a bias-free model exports them as zeros
    zeros = (
        0
        if c.bias or config["architectures"][0] != "GPT2LMHeadModel"
        else c.n_layer * (2 * c.n_embd + 3 * c.n_embd + c.n_embd + c.mlp_hidden + c.n_embd) + c.n_embd
    )
    padded = (c.padded_vocab - c.vocab_size) * c.n_embd * (1 if c.tie_embeddings else 2)
    assert config["vocab_size"] == hf.get_output_embeddings().weight.shape[0] == 512
    assert sum(p.numel() for p in hf.parameters()) == model.num_params() - padded + zeros


def test_mixed_switches_are_refused(book, tmp_path):
    model = GPT(GPTConfig(vocab_size=512, **SHAPE, **{**MODERN, "positions": "learned"}))
    with pytest.raises(ValueError, match=r"no transformers architecture .*'positions': 'learned'"):
        export_hf(model, book["tokenizer"], str(tmp_path))
