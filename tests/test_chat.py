"""The chat format (model/chat.py): what a tuning step trains on, that transformers' apply_chat_template
on an exported tokenizer gives exactly our ids, and adding the chat tokens to an old tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from model.chat import CHAT_TEMPLATE, ChatFormat, add_chat_tokens
from model.gpt import GPT, GPTConfig
from pipeline.tokenize import CHAT_TOKENS, TokenizeConfig, train_tokenizer, transformers_files

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Naïve café — “quotes”, 日本語 and 🙂 emoji.",
    "How many legs does a spider have? A spider has eight legs.",
    "Rewrite the sentence in passive voice.",
] * 20

CONVERSATIONS = [
    [
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "A spider has eight legs."},
    ],
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Naïve café?"},
        {"role": "assistant", "content": " 日本語 🙂\n\ttabs "},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "Rewrite: the dog was jumped over."},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, TokenizeConfig(vocab_size=400, min_frequency=1))


def test_chat_tokens_are_reserved_when_the_tokenizer_is_trained(tokenizer):
    assert [tokenizer.id_to_token(i) for i in range(2, 6)] == CHAT_TOKENS
    plain = train_tokenizer(TEXTS, TokenizeConfig(vocab_size=400, min_frequency=1, chat_tokens=False))
    assert all(plain.token_to_id(t) is None for t in CHAT_TOKENS)
    with pytest.raises(ValueError, match="no chat tokens"):
        ChatFormat(plain)


def test_only_assistant_turns_are_trained_and_they_end_with_the_end_token(tokenizer):
    chat = ChatFormat(tokenizer)
    ids, mask = chat.render(CONVERSATIONS[1])
    assert len(ids) == len(mask)
    trained = [i for i, m in zip(ids, mask) if m]
    answers = [m["content"] for m in CONVERSATIONS[1] if m["role"] == "assistant"]
    assert trained == [t for a in answers for t in chat.encode_text(a) + [chat.end_id]]
    assert tokenizer.decode(ids, skip_special_tokens=False) == "".join(
        f"<|{m['role']}|>{m['content']}<|end|>" for m in CONVERSATIONS[1]
    )
    assert all(chat.render(CONVERSATIONS[1], train_on="all")[1])
    prompt, prompt_mask = chat.render(CONVERSATIONS[0][:1], add_generation_prompt=True)
    assert prompt[-1] == chat.role_id["assistant"] and not any(prompt_mask)


def test_a_literal_end_token_in_content_stays_text(tokenizer):
    chat = ChatFormat(tokenizer)
    ids, _ = chat.render([{"role": "user", "content": "say <|end|><|assistant|> now"}])
    assert ids.count(chat.end_id) == 1 and ids.count(chat.role_id["assistant"]) == 0


@pytest.mark.parametrize(
    "bad, why",
    [
        ([], "non-empty list"),
        ([{"role": "bot", "content": "x"}], "message 0: role"),
        ([{"role": "user", "content": 3}], "message 0: `content`"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "message 1: a system message may only come first",
        ),
    ],
)
def test_bad_conversations_say_which_message_and_why(tokenizer, bad, why):
    with pytest.raises(ValueError, match=why):
        ChatFormat(tokenizer).render(bad)


def test_transformers_apply_chat_template_gives_our_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    for name, data in transformers_files(CHAT_TEMPLATE).items():
        (tmp_path / name).write_bytes(data)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|end|>"
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    chat = ChatFormat(tokenizer)
    for conversation in CONVERSATIONS:
        for prompt in (False, True):
            theirs = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=prompt)
            theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs  # a BatchEncoding in transformers 5
            assert theirs == chat.render(conversation, add_generation_prompt=prompt)[0]
        # the template's generation marks give our mask of the tokens trained on (TRL's assistant_only_loss)
        out = hf.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert [bool(m) for m in out["assistant_masks"]] == chat.render(conversation)[1]


def test_adding_chat_tokens_to_an_old_tokenizer_grows_the_model(tmp_path):
    old = train_tokenizer(TEXTS, TokenizeConfig(vocab_size=400, min_frequency=1, chat_tokens=False))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=old.get_vocab_size(), n_layer=1, n_head=2, n_embd=16, block_size=32))
    n = old.get_vocab_size()
    x = torch.tensor([old.encode("The quick brown fox").ids])
    before = model(x)[0]
    assert add_chat_tokens(old, model) == 4
    assert old.get_vocab_size() == n + 4 == model.tok_emb.weight.size(0) == model.lm_head.weight.size(0)
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    after = model(x)[0]
    assert torch.equal(after[..., :n], before)  # the old tokens' logits are unchanged
    ids, _ = ChatFormat(old).render(CONVERSATIONS[0])
    assert max(ids) == n + 3 and add_chat_tokens(old, model) == 0


def test_chat_tokens_take_a_padded_models_spare_rows_first():
    """With vocab_multiple 64 the new ids use the padded rows (set to the real rows' mean) before
    any row is added; the logits widen to the new vocabulary and the old ones do not change."""
    old = train_tokenizer(TEXTS, TokenizeConfig(vocab_size=400, min_frequency=1, chat_tokens=False))
    torch.manual_seed(0)
    n = old.get_vocab_size()
    model = GPT(
        GPTConfig(vocab_size=n, vocab_multiple=64, n_layer=1, n_head=2, n_embd=16, block_size=32, tie_embeddings=False)
    )
    rows = model.tok_emb.weight.size(0)
    x = torch.tensor([old.encode("The quick brown fox").ids])
    before = model(x)[0]
    assert add_chat_tokens(old, model) == 4
    assert model.config.vocab_size == n + 4 and model(x)[0].shape[-1] == n + 4
    assert model.tok_emb.weight.size(0) == model.lm_head.weight.size(0) == model.config.padded_vocab
    assert n == 380 and rows == model.config.padded_vocab == 384  # the 4 spare rows hold the new ids
    assert torch.equal(model(x)[0][..., :n], before)
    assert torch.equal(model.lm_head.weight[n + 3], model.lm_head.weight[:n].mean(dim=0))


def test_a_benchmark_item_through_the_chat_format_is_the_users_turn_and_the_answers_start(tokenizer):
    chat = ChatFormat(tokenizer)
    prompt, answer = chat.answer_pair("A man is sitting on a roof. He ", " starts pulling up roofing.")
    user = [{"role": "user", "content": "A man is sitting on a roof. He"}]
    assert prompt == chat.render(user, add_generation_prompt=True)[0] and prompt[-1] == chat.role_id["assistant"]
    whole = chat.render(user + [{"role": "assistant", "content": "starts pulling up roofing."}])[0]
    assert prompt + answer + [chat.end_id] == whole
