"""The chat format: conversations of `system`/`user`/`assistant` messages as token ids, with a mask
of the tokens a tuning step trains on.

A turn is its role token, the content's tokens and <|end|>:

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

The role and end tokens are special tokens reserved when the tokenizer is trained (pipeline/tokenize.py
CHAT_TOKENS); `add_chat_tokens` adds them to a tokenizer trained without them and grows the model's
embeddings to match. Content is encoded as plain text: a message that contains the string "<|end|>"
cannot end its turn (transformers' apply_chat_template, which tokenizes the rendered string, would
read it as the token: that is the only case where the two differ). CHAT_TEMPLATE is the same format
in Jinja, for the tokenizer_config.json of an exported chat model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from storage.tokens import CHAT_TOKENS

ROLES = ("system", "user", "assistant")
END = CHAT_TOKENS[-1]

# {% generation %} marks what an assistant turn trains on (its content and <|end|>), so
# apply_chat_template(..., return_assistant_tokens_mask=True), and TRL's assistant_only_loss, give
# our mask too.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|assistant|>' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class ChatFormat:
    """Renders conversations with one tokenizer's ids for the role and end tokens."""

    def __init__(self, tokenizer: Tokenizer):
        missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"the tokenizer has no chat tokens ({', '.join(missing)}): train it with chat_tokens "
                "on (the default) or add them with model.chat.add_chat_tokens"
            )
        self.tokenizer = tokenizer
        self.role_id = {role: tokenizer.token_to_id(f"<|{role}|>") for role in ROLES}
        self.end_id = tokenizer.token_to_id(END)

    def encode_text(self, text: str) -> list[int]:
        return encode_plain(self.tokenizer, text)

    def answer_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """A benchmark item through the chat format: the context as the user's turn, ending where
        the assistant's answer starts, and the continuation as the start of that answer (stripped
        of the space a plain continuation begins with; no <|end|>: only the choice is scored)."""
        prompt = self.render([{"role": "user", "content": context.strip()}], add_generation_prompt=True)[0]
        return prompt, self.encode_text(continuation.strip())

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False, train_on: str = "assistant"
    ) -> tuple[list[int], list[bool]]:
        """(ids, mask): mask is True for the tokens trained on, the content and <|end|> of each
        assistant turn (train_on="assistant") or every token (train_on="all"). With
        add_generation_prompt the ids end with <|assistant|>, where a model's answer begins."""
        check_messages(messages)
        if train_on not in ("assistant", "all"):
            raise ValueError(f"train_on must be 'assistant' or 'all', not {train_on!r}")
        ids: list[int] = []
        mask: list[bool] = []
        for m in messages:
            content = self.encode_text(m["content"]) + [self.end_id]
            trained = train_on == "all" or m["role"] == "assistant"
            ids += [self.role_id[m["role"]]] + content
            mask += [train_on == "all"] + [trained] * len(content)
        if add_generation_prompt:
            ids.append(self.role_id["assistant"])
            mask.append(False)
        return ids, mask


def encode_plain(tokenizer: Tokenizer, text: str) -> list[int]:
    """Plain text's ids: special-token strings in it stay text."""
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        return tokenizer.encode(text, add_special_tokens=False).ids
    finally:
        tokenizer.encode_special_tokens = before


def check_messages(messages) -> None:
    """A ValueError that says which message is wrong and how."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation is a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i}: not an object with `role` and `content`")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role {m.get('role')!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: `content` must be a string")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")


def add_chat_tokens(tokenizer: Tokenizer, model=None) -> int:
    """Add the chat tokens a tokenizer lacks (as special tokens, ids after the current vocabulary) and
    grow `model`'s token embedding and output head to the new vocabulary: the new rows start as the
    mean of the old ones, so no new token starts out likelier than the tokens the model knows.
    Returns how many tokens were added."""
    added = tokenizer.add_special_tokens([t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None])
    if model is not None:
        resize_vocab(model, tokenizer.get_vocab_size())
    return added


@torch.no_grad()
def resize_vocab(model, vocab_size: int) -> None:
    """Grow a GPT's vocabulary to `vocab_size` ids (never shrinks: ids in use must stay). New ids take
    padded rows (config.vocab_multiple) first, then new rows, all set to the mean of the real ones."""
    c = model.config
    if vocab_size <= c.vocab_size:
        return
    rows = -(-vocab_size // c.vocab_multiple) * c.vocab_multiple

    def grown(weight: torch.Tensor) -> torch.nn.Parameter:
        mean = weight[: c.vocab_size].mean(dim=0, keepdim=True)
        out = torch.cat([weight, mean.expand(max(0, rows - weight.size(0)), -1)])
        out[c.vocab_size : vocab_size] = mean
        return torch.nn.Parameter(out)

    tied = model.lm_head.weight is model.tok_emb.weight
    model.tok_emb.weight = grown(model.tok_emb.weight)
    model.lm_head.weight = model.tok_emb.weight if tied else grown(model.lm_head.weight)
    model.tok_emb.num_embeddings = model.lm_head.out_features = model.tok_emb.weight.size(0)
    c.vocab_size = vocab_size
