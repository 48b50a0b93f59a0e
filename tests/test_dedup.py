"""Exact and near-duplicate removal on real text: Gutenberg books cut into paragraph windows, with
injected copies, and dolma's real Common Crawl dedup fixture."""

from __future__ import annotations

import gzip
import itertools
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash
from pydantic import ValidationError

from pipeline import minhash
from pipeline.dedup import (
    Corpus,
    DedupConfig,
    apply_duplicates,
    clusters,
    implied_threshold,
    pairs_table,
    signature_matrix,
    signatures,
)
from pipeline.dedup_run import find_duplicates
from pipeline.schema import docs_from_rows
from pipeline.text import normalize, normalize_texts, word_ngrams
from pipeline.union_find import DisjointSets

GUTENBERG = "text/gutenberg-top-authors-subset.jsonl.gz"
DOLMA = "dedup/dolma/documents-000.jsonl.gz"


def gutenberg_windows(path, books=3, words_per_doc=200):
    """The first books' bodies (PG header/footer cut) in windows of whole paragraphs, one document
    each, plus each book's PG license footer as its own document (real boilerplate). A book
    without the PG markers is all body and has no footer document. books=None: every book."""
    shards = []
    with gzip.open(path, "rt") as f:
        for line in itertools.islice(f, books):
            book = json.loads(line)
            text = book["text"]
            start, end = text.find("*** START OF"), text.find("*** END OF")
            marked = 0 <= start < end
            body = text[text.find("\n", start) + 1 : end] if marked else text
            docs, cur, n = [], [], 0
            for para in (p for p in body.split("\n\n") if p.strip()):
                cur.append(para)
                n += len(para.split())
                if n >= words_per_doc:
                    docs.append({"id": f"{book['id']}/{len(docs)}", "text": "\n\n".join(cur)})
                    cur, n = [], 0
            if marked:
                docs.append({"id": f"{book['id']}/footer", "text": text[end:]})
            shards.append(docs)
    return shards


def substitute(text, k, seed):
    """A near duplicate: k words replaced by other words (whitespace kept)."""
    rng = random.Random(seed)
    parts = text.split(" ")
    for i in rng.sample(range(len(parts)), k):
        parts[i] = "zanzibar" if parts[i] != "zanzibar" else "quokka"
    return " ".join(parts)


def true_jaccard(a, b, n=5):
    sets = [set(word_ngrams(normalize(t).split(), n)) for t in (a, b)]
    return len(sets[0] & sets[1]) / len(sets[0] | sets[1])


def run(shards, config, partitions=1):
    tables = [docs_from_rows(s) for s in shards]
    dups = find_duplicates(tables, config, partitions)
    return tables, pa.concat_tables(dups)


def ipc_bytes(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def books(request):
    from tests.conftest import require_data

    return gutenberg_windows(require_data(GUTENBERG))


def test_injected_duplicates_found_distinct_kept(books):
    config = DedupConfig()
    originals = [d for shard in books for d in shard if not d["id"].endswith("/footer")]
    rng = random.Random(7)
    picked = rng.sample(originals, 12)
    injected, expected = [], {}
    for i, doc in enumerate(picked[:6]):  # exact after normalization: case, spacing, punctuation changed
        variants = [
            doc["text"],
            doc["text"].upper(),
            "  " + doc["text"].replace(" ", "\n "),
            doc["text"].replace(",", " ,").replace(".", "!"),
        ]
        injected.append({"id": f"exact-{i}", "text": variants[i % len(variants)]})
        expected[f"exact-{i}"] = ("exact_duplicate", doc["id"])
    for i, doc in enumerate(picked[6:]):  # near: 2 tokens of ~200 substituted
        near = substitute(doc["text"], 2, seed=i)
        # true Jaccard >= 0.85: an LSH candidate with probability > 0.99 (14 bands x 8 rows)
        assert true_jaccard(doc["text"], near) >= 0.85
        injected.append({"id": f"near-{i}", "text": near})
        expected[f"near-{i}"] = ("near_duplicate", doc["id"])
    _, dups = run(books + [injected], config)
    found = {r["id"]: r for r in dups.to_pylist()}

    # The PG license footers of the 2nd and 3rd book are real near duplicates of the 1st one's.
    first_footer = books[0][-1]["id"]
    for shard in books[1:]:
        row = found.pop(shard[-1]["id"])
        assert (row["reason"], row["duplicate_of"]) == ("near_duplicate", first_footer)
    assert {k: (r["reason"], r["duplicate_of"]) for k, r in found.items()} == expected
    for k, r in found.items():
        if k.startswith("exact"):
            assert r["similarity"] == 1.0
        else:
            assert config.threshold <= r["similarity"] < 1.0
    assert len(originals) > 400  # the distinct windows (none flagged above) are a real test


def test_first_occurrence_kept_and_clusters_transitive(books):
    original = books[0][10]
    changed = {"id": "changed", "text": substitute(original["text"], 3, seed=1)}
    _, dups = run([[changed], [original]], DedupConfig())
    row = dups.to_pylist()[0]
    assert (row["id"], row["reason"], row["duplicate_of"], row["cluster_id"]) == (
        original["id"],
        "near_duplicate",
        "changed",
        0,
    )
    # Every member of a cluster points at its kept (first) document, never at another duplicate.
    again = dict(changed, id="changed-again")
    _, dups = run([[original], [changed], [again]], DedupConfig())
    assert [(r["id"], r["duplicate_of"], r["cluster_id"]) for r in dups.to_pylist()] == [
        ("changed", original["id"], 0),
        ("changed-again", original["id"], 0),
    ]
    # A chain of edits: each step is a near duplicate of the previous one, the ends are not.
    chain = [original]
    for step in range(1, 9):
        chain.append({"id": f"step-{step}", "text": substitute(chain[-1]["text"], 2, seed=step)})
        assert true_jaccard(chain[-2]["text"], chain[-1]["text"]) >= 0.85
    assert true_jaccard(chain[0]["text"], chain[-1]["text"]) < 0.7
    _, dups = run([chain], DedupConfig())
    rows = dups.to_pylist()
    assert [r["duplicate_of"] for r in rows] == [original["id"]] * 8
    assert rows[-1]["similarity"] < 0.8 <= rows[0]["similarity"]


def test_signatures_equal_datasketch(books):
    """Our vectorized signatures are datasketch's MinHash of the same shingles, bit for bit."""
    config = DedupConfig()
    docs = [d for shard in books for d in shard][:300]
    docs += [
        {"id": f"edge-{i}", "text": t}
        for i, t in enumerate(
            [
                "",
                "one",
                "two words",
                "a b c d",
                "a b c d e",
                "a b c d e f",
                "Ünïcode wörds ça, naïve café!",
                "tabs\tand\u00a0no-break\u2003spaces\u3000here",
                "नमस्ते दुनिया यह एक परीक्षण है",
            ]
        )
    ]
    table = docs_from_rows(docs)
    sigs = signatures(table, config)
    matrix = signature_matrix(sigs)
    _, words = normalize_texts(table.column("text").combine_chunks())
    for i, ws in enumerate(words.to_pylist()):
        m = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=minhash.shingle_hash, scheme="affine32")
        for shingle in word_ngrams(ws, config.ngram):
            m.update(shingle)
        assert np.array_equal(m.hashvalues, matrix[i]), docs[i]["id"]
        assert sigs.column("shingles")[i].as_py() == len(word_ngrams(ws, config.ngram))
    # Word splitting is Python's str.split on the normalized text (Unicode spaces included).
    assert words.to_pylist()[-2] == ["tabs", "and", "no", "break", "spaces", "here"]
    assert normalize("Ünïcode wörds ça, naïve café!") == "ünïcode wörds ça naïve café"
    assert normalize("नमस्ते दुनिया, end.Start") == "नमस्ते दुनिया end start"  # combining marks stay in words
    # And the estimate is the Jaccard of the real shingle sets, within MinHash's error.
    a, b = books[0][20]["text"], substitute(books[0][20]["text"], 10, seed=4)
    true = true_jaccard(a, b)
    m = signature_matrix(signatures(docs_from_rows([{"id": "a", "text": a}, {"id": "b", "text": b}]), config))
    assert abs(minhash.jaccard(m[:1], m[1:])[0] - true) < 0.12


def test_deterministic_and_independent_of_split_and_partitions(books):
    config = DedupConfig()
    flat = [d for shard in books for d in shard]
    flat += [dict(flat[5], id="copy-5"), {"id": "near-9", "text": substitute(flat[9]["text"], 2, seed=3)}]
    sig_a = signatures(docs_from_rows(flat), config)
    sig_b = signatures(docs_from_rows(flat), config)
    assert ipc_bytes(sig_a) == ipc_bytes(sig_b)
    _, one = run([flat], config)
    for shards, partitions in [
        ([flat[:100], flat[100:433], flat[433:]], 1),
        ([flat], 7),
        ([flat[:200], flat[200:]], 3),
    ]:
        _, other = run(shards, config, partitions)
        assert [(r["id"], r["duplicate_of"], r["reason"]) for r in other.to_pylist()] == [
            (r["id"], r["duplicate_of"], r["reason"]) for r in one.to_pylist()
        ]
    assert one.num_rows == 4 and set(one.column("id").to_pylist()) >= {"copy-5", "near-9"}
    # Another seed gives other signatures, the same decisions on these clear-cut cases.
    other = DedupConfig(seed=2)
    assert ipc_bytes(signatures(docs_from_rows(flat[:5]), other)) != ipc_bytes(sig_a.slice(0, 5))
    assert run([flat], other)[1].column("id").to_pylist() == one.column("id").to_pylist()


def test_apply_duplicates_per_shard(books):
    shards = [books[0][:50], books[0][50:100] + [dict(books[0][3], id="dup-3")]]
    tables = [docs_from_rows(s) for s in shards]
    dups = find_duplicates(tables, DedupConfig())
    assert dups[0].num_rows == 0 and dups[1].column("id").to_pylist() == ["dup-3"]
    first = apply_duplicates(tables[0], dups[0])
    assert first.removed.num_rows == 0 and first.kept.num_rows == 50
    second = apply_duplicates(tables[1], dups[1])
    assert second.kept.num_rows == 50 and "dup-3" not in second.kept.column("id").to_pylist()
    row = second.removed.to_pylist()[0]
    assert row["id"] == "dup-3" and row["reason"] == "exact_duplicate"
    assert (row["cluster_id"], row["duplicate_of"], row["similarity"]) == (3, books[0][3]["id"], 1.0)
    assert row["detail"] == f"cluster=3 duplicate_of={books[0][3]['id']} similarity=1.0000"
    assert second.counts["removed"] == {"exact_duplicate": 1}
    assert second.counts["docs_in"] == 51 and second.counts["docs_kept"] == 50
    with pytest.raises(ValueError, match="does not match"):
        apply_duplicates(tables[0], dups[1])


def test_normalization_switches(books):
    doc = books[1][4]
    shard = [doc, {"id": "upper", "text": doc["text"].upper()}]
    _, dups = run([shard], DedupConfig())
    assert dups.to_pylist()[0]["reason"] == "exact_duplicate"
    _, dups = run([shard], DedupConfig(lowercase=False))  # every shingle differs now
    assert dups.num_rows == 0
    assert normalize("  Hello,\tWORLD!  ") == "hello world"
    assert normalize("A-b", lowercase=False, strip_punctuation=False) == "A-b"
    assert normalize(" a  b ", fold_whitespace=False) == " a  b "
    assert word_ngrams(["a", "b"], 5) == ["a b"] and word_ngrams([], 5) == []


def test_exact_and_near_switches(books):
    doc = books[2][7]
    shard = [doc, dict(doc, id="same"), {"id": "near", "text": substitute(doc["text"], 3, seed=5)}]
    _, dups = run([shard], DedupConfig(exact=False))
    assert [(r["id"], r["reason"], r["similarity"]) for r in dups.to_pylist()][0] == ("same", "near_duplicate", 1.0)
    _, dups = run([shard], DedupConfig(near=False))
    assert [(r["id"], r["reason"]) for r in dups.to_pylist()] == [("same", "exact_duplicate")]


def test_short_and_empty_documents():
    docs = [
        {"id": "e1", "text": ""},
        {"id": "e2", "text": " ... "},
        {"id": "s1", "text": "three short words"},
        {"id": "s2", "text": "Three short words!"},
        {"id": "s3", "text": "three other words"},
    ]
    sigs = signatures(docs_from_rows(docs), DedupConfig())
    assert sigs.column("shingles").to_pylist() == [0, 0, 1, 1, 1]
    assert (signature_matrix(sigs)[:2] == minhash.EMPTY).all()  # datasketch's empty MinHash
    _, dups = run([docs], DedupConfig())
    assert [(r["id"], r["duplicate_of"]) for r in dups.to_pylist()] == [("e2", "e1"), ("s2", "s1")]
    # Without exact dedup, documents with no words have no bucket keys and are never near duplicates.
    _, dups = run([docs], DedupConfig(exact=False))
    assert [r["id"] for r in dups.to_pylist()] == ["s2"]


def test_dolma_real_cc_documents(shared_data):
    rows = [json.loads(line) for line in gzip.open(shared_data(DOLMA), "rt")]
    docs = [{"id": r["id"], "text": r["text"], "url": r["metadata"].get("url")} for r in rows]
    tables, dups = run([docs[:5], docs[5:]], DedupConfig())
    assert dups.num_rows == 0  # ten distinct pages
    # Oracle: true 5-gram Jaccard of the two advocatesaz.org tag pages (shared site boilerplate).
    jaccard = true_jaccard(docs[0]["text"], docs[1]["text"])
    assert 0.3 < jaccard < 0.45
    loose = DedupConfig(num_perm=128, bands=64, rows=2, threshold=0.25)
    per_shard = find_duplicates(tables, loose)
    assert [(r["id"], r["duplicate_of"]) for r in per_shard[0].to_pylist()] == [(docs[1]["id"], docs[0]["id"])]
    assert abs(per_shard[0].column("similarity")[0].as_py() - jaccard) < 0.15
    result = apply_duplicates(tables[0], per_shard[0])
    assert result.counts["removed"] == {"near_duplicate": 1} and result.kept.num_rows == 4


def test_union_find_matches_plain_union_find():
    rng = np.random.default_rng(0)
    n = 3000
    edges = rng.integers(0, n, (2500, 2))
    edges = np.concatenate([edges, np.stack([np.arange(100, 599), np.arange(101, 600)], 1)])  # a long chain
    sets = DisjointSets(n)
    for chunk in np.array_split(edges, 5):
        sets.union(chunk[:, 0], chunk[:, 1])
    roots = sets.roots()
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    assert roots.tolist() == [find(i) for i in range(n)]  # same sets, and each root is its set's minimum
    assert (roots[100:600] == roots[100]).all()


def test_config_and_input_errors(books):
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupConfig(num_perm=64, bands=14, rows=8)
    with pytest.raises(ValidationError):
        DedupConfig(ngrams=5)  # misspelled field
    assert abs(implied_threshold(14, 8) - 0.7191) < 1e-3
    with pytest.raises(ValueError, match="missing column"):
        signatures(pa.table({"id": ["a"]}), DedupConfig())
    corpus = Corpus({0: 200_000_000})
    with pytest.raises(MemoryError, match="raise memory_mb"):
        clusters(corpus, [pairs_table(np.zeros(0, np.uint64), np.zeros(0, np.uint64))], DedupConfig(memory_mb=1024))
