"""Export a trained model to a Hugging Face transformers folder (config.json, model.safetensors,
tokenizer files) in an architecture transformers already has, so `AutoModelForCausalLM` and
lm-evaluation-harness (`--model hf --model_args pretrained=<dir>`) load it without custom code.

GPT-2's switches export as GPT2LMHeadModel. The modern ones (RoPE, RMSNorm, SwiGLU, no biases)
export as LlamaForCausalLM, or Qwen3ForCausalLM when QK-norm is on. Any other mix has no
transformers twin and is refused with the switches that are in the way. transformers itself is
not needed to export, only to load. The rows a padded vocabulary (vocab_multiple) adds to the
embedding and head are cut off: the export has exactly the model's vocab_size ids.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from model.gpt import GPT, GPTConfig

GPT2_SWITCHES = {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "tie_embeddings": True}
LLAMA_SWITCHES = {"positions": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def architecture(c: GPTConfig) -> str:
    """The transformers class this config exports as, or a ValueError naming what does not fit."""
    if all(getattr(c, k) == v for k, v in GPT2_SWITCHES.items()):
        return "GPT2LMHeadModel"
    if all(getattr(c, k) == v for k, v in LLAMA_SWITCHES.items()):
        return "Qwen3ForCausalLM" if c.qk_norm else "LlamaForCausalLM"
    off = {k: getattr(c, k) for k in LLAMA_SWITCHES if getattr(c, k) != LLAMA_SWITCHES[k]}
    raise ValueError(
        f"no transformers architecture has this mix of switches: GPT-2 needs {GPT2_SWITCHES}, "
        f"Llama/Qwen3 need {LLAMA_SWITCHES} (this model has {off})"
    )


def _gpt2(model: GPT) -> tuple[dict, dict[str, torch.Tensor]]:
    c, sd = model.config, model.state_dict()
    config = {
        "model_type": "gpt2",
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.mlp_hidden,
        "activation_function": "gelu",
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
    }

    def with_bias(prefix: str, size: int) -> torch.Tensor:  # GPT-2 always has biases; ours may not
        return sd.get(f"{prefix}.bias", torch.zeros(size))

    out = {
        "transformer.wte.weight": sd["tok_emb.weight"][: c.vocab_size],
        "transformer.wpe.weight": sd["pos_emb.weight"],
    }
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
        for a, b, width in (("ln1", "ln_1", c.n_embd), ("ln2", "ln_2", c.n_embd)):
            out[f"{theirs}.{b}.weight"] = sd[f"{ours}.{a}.weight"]
            out[f"{theirs}.{b}.bias"] = with_bias(f"{ours}.{a}", width)
        for a, b, width in (
            ("attn.qkv", "attn.c_attn", 3 * c.n_embd),
            ("attn.proj", "attn.c_proj", c.n_embd),
            ("mlp.fc", "mlp.c_fc", c.mlp_hidden),
            ("mlp.proj", "mlp.c_proj", c.n_embd),
        ):
            out[f"{theirs}.{b}.weight"] = sd[f"{ours}.{a}.weight"].t()  # GPT-2's Conv1D stores (in, out)
            out[f"{theirs}.{b}.bias"] = with_bias(f"{ours}.{a}", width)
    out["transformer.ln_f.weight"] = sd["ln_f.weight"]
    out["transformer.ln_f.bias"] = with_bias("ln_f", c.n_embd)
    return config, out


def _llama(model: GPT, qwen3: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    c, sd = model.config, model.state_dict()
    config = {
        "model_type": "qwen3" if qwen3 else "llama",
        "hidden_size": c.n_embd,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_head,
        "head_dim": c.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "use_sliding_window": False,
    }
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"][: c.vocab_size], "model.norm.weight": sd["ln_f.weight"]}
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        q, k, v = sd[f"{ours}.attn.qkv.weight"].split(c.n_embd, dim=0)
        gate, up = sd[f"{ours}.mlp.fc.weight"].split(c.mlp_hidden, dim=0)
        out |= {
            f"{theirs}.input_layernorm.weight": sd[f"{ours}.ln1.weight"],
            f"{theirs}.post_attention_layernorm.weight": sd[f"{ours}.ln2.weight"],
            f"{theirs}.self_attn.q_proj.weight": q,
            f"{theirs}.self_attn.k_proj.weight": k,
            f"{theirs}.self_attn.v_proj.weight": v,
            f"{theirs}.self_attn.o_proj.weight": sd[f"{ours}.attn.proj.weight"],
            f"{theirs}.mlp.gate_proj.weight": gate,
            f"{theirs}.mlp.up_proj.weight": up,
            f"{theirs}.mlp.down_proj.weight": sd[f"{ours}.mlp.proj.weight"],
        }
        if qwen3:
            out[f"{theirs}.self_attn.q_norm.weight"] = sd[f"{ours}.attn.q_norm.weight"]
            out[f"{theirs}.self_attn.k_norm.weight"] = sd[f"{ours}.attn.k_norm.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][: c.vocab_size]
    return config, out


def _converted(model: GPT) -> tuple[str, dict, dict[str, torch.Tensor]]:
    arch = architecture(model.config)
    config, tensors = _gpt2(model) if arch == "GPT2LMHeadModel" else _llama(model, arch == "Qwen3ForCausalLM")
    return arch, config, tensors


def export_hf(model: GPT, tokenizer_file: str, out_dir: str, chat_template: str | None = None) -> dict:
    """Write `out_dir` as a transformers model folder; returns its config.json content. A chat
    model's (chat_template given) ends its answers with <|end|>: that is its eos token."""
    arch, config, tensors = _converted(model)
    return _write(model, arch, config, tensors, tokenizer_file, out_dir, chat_template)


def export_classifier(classifier, tokenizer_file: str, labels: list[str], out_dir: str) -> dict:
    """A model.classifier.Classifier as GPT2/Llama/Qwen3ForSequenceClassification (which pool the
    last token that is not padding, as `pooling="last"` does); returns config.json's content."""
    if classifier.pooling != "last":
        raise ValueError(
            "transformers' *ForSequenceClassification classifies on the last token: a "
            "mean-pooling classifier has no transformers twin"
        )
    if len(labels) != classifier.head.out_features:
        raise ValueError(f"{len(labels)} labels for a head of {classifier.head.out_features} classes")
    arch, config, tensors = _converted(classifier.gpt)
    arch = arch.removesuffix("LMHeadModel").removesuffix("ForCausalLM") + "ForSequenceClassification"
    tensors.pop("lm_head.weight", None)
    tensors["score.weight"] = classifier.head.weight
    config |= {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    return _write(classifier.gpt, arch, config, tensors, tokenizer_file, out_dir)


def _write(
    model: GPT,
    arch: str,
    config: dict,
    tensors: dict[str, torch.Tensor],
    tokenizer_file: str,
    out_dir: str,
    chat_template: str | None = None,
) -> dict:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    from storage.tokens import CHAT_TOKENS, EOT, PAD, transformers_files

    tokenizer = Tokenizer.from_file(tokenizer_file)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_file} has {tokenizer.get_vocab_size()} tokens, more than the "
            f"model's vocab_size {model.config.vocab_size}"
        )
    eot, pad = tokenizer.token_to_id(EOT), tokenizer.token_to_id(PAD)
    eos = eot if chat_template is None else tokenizer.token_to_id(CHAT_TOKENS[-1])
    config = {
        "architectures": [arch],
        **config,
        "vocab_size": model.config.vocab_size,
        "bos_token_id": eot,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
        os.path.join(out_dir, "model.safetensors"),
        metadata={"format": "pt"},
    )
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eot, "eos_token_id": eos, "pad_token_id": pad}, f, indent=2)
    shutil.copyfile(tokenizer_file, os.path.join(out_dir, "tokenizer.json"))
    for name, data in transformers_files(chat_template).items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    return config


def export_checkpoint(source: str, out_dir: str, data: str = "") -> dict:
    """Export any checkpoint with its run's tokenizer: a train or sft output URL, a model.pt or
    training checkpoint, or a folder holding one (model.source.resolve; `data` names the tokenize output
    of a file found outside a run); a classify output as *ForSequenceClassification. Returns
    config.json's content."""
    from model.classify import classifier_files, holds_classifier, load_classifier
    from model.evaluate import load_model
    from model.source import resolve

    if holds_classifier(source.rstrip("/")):
        classifier, _, saved = load_classifier(source.rstrip("/"))
        return export_classifier(classifier, classifier_files(source.rstrip("/"))[1], saved["labels"], out_dir)
    src = resolve(source, data)
    return export_hf(load_model(src.model_path), src.tokenizer_path, out_dir, src.chat_template)
