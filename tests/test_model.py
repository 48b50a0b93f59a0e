"""The GPT and the token-shard loader, on real Gutenberg text tokenized by pipeline.tokenize and
written by the store exactly as the tokenize stage writes it."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.data import Batches, TokenStream, sequential_batches, windows_to_batch
from model.generate import generate, next_token_logits
from model.gpt import GPT, GPT2, MODERN, GPTConfig, KVCache, apply_rotary, rotary_tables
from model.mfu import mfu, peak_flops
from pipeline.tokenize import TokenizeConfig, encode_table, sample_texts, train_tokenizer
from storage import Store

GUTENBERG = "text/gutenberg-top-authors-subset.jsonl.gz"
_CORPUS: dict = {}


def build_corpus(path: Path, folder: Path) -> dict:
    """Two books (first 250k chars each) as paragraph documents, one token shard per book."""
    tables = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            book = json.loads(line)
            paras = [p for p in book["text"][:250_000].split("\n\n") if p.strip()]
            tables.append(pa.table({"id": [f"{book['id']}/{k}" for k in range(len(paras))], "text": paras}))
            if len(tables) == 2:
                break
    config = TokenizeConfig(vocab_size=512, sample_chars=200_000, val_fraction=0.1)
    tokenizer = train_tokenizer(sample_texts(tables, config), config)
    out = Store(str(folder)).stage("tokenize", "test")
    train_files, val_files, train_tables = [], [], []
    for i, table in enumerate(tables):
        train, val, _ = encode_table(table, tokenizer, config)
        train_files.append(out.write_arrow(f"data/train/part-{i:05d}.arrow", train))
        val_files.append(out.write_arrow(f"data/val/part-{i:05d}.arrow", val))
        train_tables.append(train)
    return {
        "tokenizer": tokenizer,
        "config": config,
        "tables": tables,
        "train_files": train_files,
        "val_files": val_files,
        "train_tables": train_tables,
    }


@pytest.fixture
def corpus(shared_data, tmp_path_factory):
    path = shared_data(GUTENBERG)
    if path not in _CORPUS:  # built once per session; the fixture itself is per test
        _CORPUS[path] = build_corpus(path, tmp_path_factory.mktemp("tokens"))
    return _CORPUS[path]


def all_tokens(tables: list[pa.Table]) -> np.ndarray:
    return np.concatenate([np.asarray(t.column("tokens").combine_chunks().flatten()) for t in tables]).astype(np.int64)


# -- data --------------------------------------------------------------------------------------


def test_stream_concatenates_files_in_order_without_copying(corpus):
    stream = TokenStream(corpus["train_files"])
    expected = all_tokens(corpus["train_tables"])
    assert len(stream) == len(expected) > 100_000
    assert np.array_equal(stream.slice(0, len(stream)), expected)
    first = len(all_tokens(corpus["train_tables"][:1]))
    assert np.array_equal(stream.slice(first - 5, first + 5), expected[first - 5 : first + 5])  # across the file edge
    for chunk in stream.chunks:  # views into the memory-mapped files, not copies
        assert not chunk.flags.owndata and not chunk.flags.writeable
    assert stream.max_token() == expected.max() < corpus["tokenizer"].get_vocab_size()
    with pytest.raises(IndexError):
        stream.slice(0, len(stream) + 1)


def test_stream_reads_uint32_files(corpus, tmp_path):
    big = TokenizeConfig(vocab_size=70_000, val_fraction=0.0)
    table, _, _ = encode_table(corpus["tables"][0].slice(0, 300), corpus["tokenizer"], big)
    small, _, _ = encode_table(
        corpus["tables"][0].slice(0, 300), corpus["tokenizer"], big.model_copy(update={"vocab_size": 512})
    )
    st = Store(str(tmp_path)).stage("tokenize", "u32")
    s32 = TokenStream([st.write_arrow("a.arrow", table)])
    s16 = TokenStream([st.write_arrow("b.arrow", small)])
    assert s32.chunks[0].dtype == np.uint32 and s16.chunks[0].dtype == np.uint16
    assert np.array_equal(s32.slice(0, len(s32)), s16.slice(0, len(s16)))
    # A file of several record batches (sliced lists) and an empty shard read the same stream.
    parts = pa.concat_tables([small.slice(0, 100), small.slice(100)])
    empty = st.write_arrow("empty.arrow", small.slice(0, 0))
    multi = TokenStream([empty, st.write_arrow("c.arrow", parts), empty])
    assert len(multi.chunks) == 2 and multi.file_tokens[0] == 0
    assert np.array_equal(multi.slice(0, len(multi)), s16.slice(0, len(s16)))


def test_batches_visit_every_window_once_per_epoch(corpus):
    stream = TokenStream(corpus["train_files"])
    block, bs = 64, 7
    batches = Batches(stream, block, bs, seed=3)
    n = batches.n_windows
    assert n == len(stream) // (block + 1)
    everything = stream.slice(0, n * (block + 1)).reshape(n, block + 1)
    all_windows = Counter(w.tobytes() for w in everything)
    seen = []
    while len(seen) < 2 * n:
        x, y = batches.next()
        assert x.shape == y.shape == (bs, block) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
        seen += [torch.cat([xr, yr[-1:]]).numpy().tobytes() for xr, yr in zip(x, y)]
    assert Counter(seen[:n]) == all_windows and Counter(seen[n : 2 * n]) == all_windows
    assert seen[:n] != seen[n : 2 * n]  # each epoch has its own order
    x, y = windows_to_batch(stream, [5], block)
    assert np.array_equal(torch.cat([x[0], y[0, -1:]]).numpy(), everything[5])


def test_batches_resume_with_the_very_next_batch(corpus):
    stream = TokenStream(corpus["train_files"])
    a = Batches(stream, 32, 16, seed=1)
    for _ in range(500):  # more than one epoch
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # plain ints: fits any checkpoint format
    assert state["epoch"] >= 1
    b = Batches(stream, 32, 16, seed=1)
    b.load_state_dict(state)
    for _ in range(20):
        xa, ya = a.next()
        xb, yb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = Batches(stream, 32, 16, seed=2)
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(state)
    assert not torch.equal(Batches(stream, 32, 16, seed=2).next()[0], Batches(stream, 32, 16, seed=1).next()[0])


def test_sequential_batches_cover_windows_in_order(corpus):
    stream = TokenStream(corpus["val_files"])
    block, bs = 128, 16
    n = len(stream) // (block + 1)
    got = list(sequential_batches(stream, block, bs))
    assert sum(x.shape[0] for x, _ in got) == n and got[-1][0].shape[0] == n - bs * (len(got) - 1)
    assert torch.equal(got[1][0], windows_to_batch(stream, list(range(bs, 2 * bs)), block)[0])
    assert len(list(sequential_batches(stream, block, bs, max_batches=2))) == 2


def test_loader_errors_name_the_file(corpus, tmp_path):
    with pytest.raises(ValueError, match="no token files"):
        TokenStream([])
    with pytest.raises(FileNotFoundError, match="nope.arrow"):
        TokenStream([str(tmp_path / "nope.arrow")])
    text = tmp_path / "notes.arrow"
    text.write_text("not arrow at all")
    with pytest.raises(ValueError, match="notes.arrow is not an Arrow IPC token file"):
        TokenStream([str(text)])
    st = Store(str(tmp_path)).stage("x", "y")
    docs = st.write_arrow("docs.arrow", pa.table({"id": ["a"], "text": ["b"]}))
    with pytest.raises(ValueError, match="docs.arrow has no `tokens` column"):
        TokenStream([docs])
    short = st.write_arrow("short.arrow", corpus["train_tables"][0].slice(0, 2))
    n = len(TokenStream([short]))
    with pytest.raises(ValueError, match=rf"{n} tokens is less than one window .* 1025 .*short.arrow \({n} tokens\)"):
        Batches(TokenStream([short]), 1024, 4, seed=0)


# -- model -------------------------------------------------------------------------------------


def tiny(vocab: int = 512, **kw) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, **{"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(vocab_size=10, n_embd=30, n_head=4)
    with pytest.raises(ValueError):
        GPTConfig(vocab_size=10, n_layers=3)
    assert all(f.description for f in GPTConfig.model_fields.values())


def test_shapes_params_tying_and_init():
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=64)
    m = GPT(c)
    V, T, L, C = 512, 64, 4, 64
    assert m.num_params() == V * C + T * C + L * (12 * C * C + 2 * C) + C
    assert m.lm_head.weight is m.tok_emb.weight
    assert abs(m.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(m.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(2 * L)) < 0.001
    idx = torch.randint(0, V, (3, 20))
    logits, loss = m(idx)
    assert logits.shape == (3, 20, V) and loss is None
    _, loss = m(idx, torch.randint(0, V, (3, 20)))
    assert abs(loss.item() - math.log(V)) < 0.1  # untrained: close to uniform
    with pytest.raises(ValueError, match="longer than block_size 64"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_modern_switches_shapes_and_param_counts():
    V, T, L, C = 512, 64, 4, 64
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C, **GPT2))
    modern = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C, **MODERN))
    hidden = 192  # 8/3 x 64 = 170.7, rounded up to a multiple of 64
    assert modern.config.mlp_hidden == hidden and modern.pos_emb is None
    # untied head: V*C twice; attention 4C^2; SwiGLU 3*C*hidden; RMSNorm gains 2C per block + QK-norm 2 * head size
    assert modern.num_params() == 2 * V * C + L * (4 * C * C + 3 * C * hidden + 2 * C + 2 * 16) + C
    assert modern.lm_head.weight is not modern.tok_emb.weight
    assert isinstance(modern.ln_f, torch.nn.RMSNorm) and isinstance(base.ln_f, torch.nn.LayerNorm)
    idx = torch.randint(0, V, (2, T))
    for m in (base, modern):
        logits, loss = m(idx, torch.randint(0, V, (2, T)))
        assert logits.shape == (2, T, V) and abs(loss.item() - math.log(V)) < 0.15
    # 6N + 12 L H Q T, N = weights in matmuls (no position table; the untied input embedding is a lookup).
    assert base.flops_per_token() == 6 * (base.num_params() - T * C) + 12 * L * 4 * 16 * T
    assert modern.flops_per_token(32) == 6 * (modern.num_params() - V * C) + 12 * L * 4 * 16 * 32
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(vocab_size=10, n_embd=12, n_head=4, positions="rotary")


def test_rotary_is_relative():
    """RoPE makes q.k depend on the distance between positions only, and keeps vector norms."""
    c = GPTConfig(vocab_size=10, block_size=16, n_head=1, n_embd=8, positions="rotary")
    cos, sin = rotary_tables(c)
    q, k = torch.randn(8), torch.randn(8)

    def at(v, pos):  # noqa: E306
        x = torch.zeros(1, 1, 16, 8)
        x[0, 0, pos] = v
        return apply_rotary(x, cos, sin)[0, 0, pos]

    assert torch.allclose(at(q, 3) @ at(k, 1), at(q, 12) @ at(k, 10), atol=1e-5)
    assert not torch.allclose(at(q, 3) @ at(k, 1), at(q, 3) @ at(k, 2), atol=1e-3)
    assert torch.allclose(at(q, 5).norm(), q.norm(), atol=1e-5)


def test_mfu_uses_the_dense_peak_of_the_device():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA H200", "float32") == 494e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert peak_flops("cpu", "bfloat16") is None and peak_flops("NVIDIA GeForce RTX 4090", "bfloat16") is None
    assert mfu(1e9, 500_000, 989e12) == pytest.approx(1e9 * 500_000 / 989e12)
    assert mfu(1e9, 500_000, 989e12, devices=8) == pytest.approx(1e9 * 500_000 / 989e12 / 8)
    assert mfu(1e9, 500_000, None) is None


@pytest.mark.parametrize("arch", [GPT2, MODERN], ids=["gpt2", "modern"])
def test_attention_is_causal(arch):
    torch.manual_seed(0)
    m = GPT(tiny(**arch)).eval()
    idx = torch.randint(0, 512, (2, 32))
    changed = idx.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 512
    a, _ = m(idx)
    b, _ = m(changed)
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:], atol=1e-3)


def test_learns_real_text(corpus):
    """A few hundred AdamW steps on one batch of real text: the loss must fall far below uniform."""
    torch.manual_seed(0)
    m = GPT(tiny())
    x, y = Batches(TokenStream(corpus["train_files"]), 32, 8, seed=0).next()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        _, loss = m(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 6.0 and loss.item() < 2.0


def test_generate_is_seeded_and_stops_at_eos():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    prompt = torch.tensor([[1, 2, 3]])

    def run(seed, **kw):
        return generate(m, prompt, 40, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, other = run(7), run(7), run(8)
    assert a.shape == (1, 43) and torch.equal(a[:, :3], prompt)  # longer than block_size: the context slides
    assert torch.equal(a, b) and not torch.equal(a, other)
    greedy = generate(m, prompt, 5, temperature=0)
    assert torch.equal(greedy, generate(m, prompt, 5, temperature=0))
    stop = generate(m, prompt, 5, temperature=0, eos_id=int(greedy[0, 3]))
    assert torch.equal(stop, greedy[:, :4])
    # top_k=1 and a tiny top_p are greedy whatever the seed
    assert torch.equal(generate(m, prompt, 5, top_k=1, generator=torch.Generator().manual_seed(1)), greedy)
    assert torch.equal(generate(m, prompt, 5, top_p=1e-6, generator=torch.Generator().manual_seed(1)), greedy)


@pytest.mark.parametrize("arch", [GPT2, MODERN], ids=["gpt2", "modern"])
def test_kv_cache_gives_the_same_tokens(arch):
    """Greedy and sampled, 100 new tokens: the same with and without the cache, also once the
    context slides past block_size; the cached logits equal a full forward pass."""
    torch.manual_seed(0)
    m = GPT(tiny(block_size=128, **arch)).eval()
    prompt = torch.randint(0, 512, (2, 9))
    for kw in ({"temperature": 0}, {"temperature": 0.9, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.3}):
        cached = generate(m, prompt, 100, use_cache=True, generator=torch.Generator().manual_seed(3), **kw)
        plain = generate(m, prompt, 100, use_cache=False, generator=torch.Generator().manual_seed(3), **kw)
        assert cached.shape == (2, 109) and torch.equal(cached, plain)
    slid = generate(tiny_model := GPT(tiny(block_size=16, **arch)).eval(), prompt, 30, temperature=0)
    assert torch.equal(slid, generate(tiny_model, prompt, 30, temperature=0, use_cache=False))
    cache = KVCache(m.config.n_layer)
    seq = torch.randint(0, 512, (1, 40))
    first, _ = m(seq[:, :30], cache=cache)
    rest = torch.cat(
        [m(seq[:, i : i + 1], cache=cache)[0] for i in range(30, 35)] + [m(seq[:, 35:], cache=cache)[0]], 1
    )
    full, _ = m(seq)
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5) and cache.length == 40


def test_sampling_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    seen = torch.tensor([[4, 3]])
    pen = next_token_logits(logits, seen, 0, None, None, 2.0)
    assert pen.tolist() == [[2.0, 1.0, 0.5, -2.0, 1.5]]  # positive divided, negative multiplied
    k2 = next_token_logits(logits, seen, 1.0, 2, None, 1.0)
    assert torch.isfinite(k2).tolist() == [[True, False, False, False, True]]
    probs = torch.softmax(logits, -1)[0]  # 0.61, 0.23, 0.08, ...: top_p 0.7 keeps the first two
    assert probs[4] < 0.7 < probs[4] + probs[0]
    p = next_token_logits(logits, seen, 1.0, None, 0.7, 1.0)
    assert torch.isfinite(p).tolist() == [[True, False, False, False, True]]


def test_chunked_loss_matches_the_whole_loss_and_its_gradients():
    """loss_chunks=4 gives the loss and the gradients of one whole cross-entropy (up to summation
    order) and no logits."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=16, n_layer=1, n_head=2, n_embd=32))
    x, y = torch.randint(0, 96, (3, 16)), torch.randint(0, 96, (3, 16))
    _, whole = model(x, y)
    whole.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits, chunked = model(x, y, loss_chunks=4)
    chunked.backward()
    assert logits is None and torch.allclose(chunked, whole, atol=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), grads))
    y[0, :10] = -100  # targets the loss skips (SFT's prompt tokens): a mean over the others either way
    model.zero_grad()
    _, whole = model(x, y)
    assert torch.allclose(model(x, y, loss_chunks=4)[1], whole, atol=1e-6)
