"""MinHash signatures of word n-gram shingles, for many documents at once, in numpy.

The signatures are bit for bit those datasketch computes with
`MinHash(num_perm, seed, hashfunc=shingle_hash, scheme="affine32")` fed each document's shingle
strings (tests check it): the permutations are datasketch's own, and so is the formula (the 32-bit
shingle hash mixed by the MurmurHash3 finalizer, then a*h + b mod 2^32, minimum per permutation).
The speed comes from the shingle hash. datasketch hashes every shingle string with SHA-1 in a
Python loop; here each distinct word is hashed once (blake2b), and an n-gram's hash is a fold of
its words' hashes, computed for all n-grams of all documents with a few array operations.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEME = "affine32"  # datasketch >= 2.0 default, named so a change of default cannot change our signatures
EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a MinHash that saw nothing
_FOLD = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram fold
_MASK64 = (1 << 64) - 1
# Shingles per block of the permutation step: a (num_perm x block) uint32 matrix of a few MiB.
_BLOCK = 8192


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations (a, b) for this num_perm and seed, as column vectors."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None]


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads every input bit over the output."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def word_hashes(words: pa.Array) -> np.ndarray:
    """A 64-bit hash of every word; each distinct word is hashed once."""
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    encoded = pc.dictionary_encode(words)
    distinct = encoded.dictionary.to_pylist()
    table = np.fromiter((_word_hash(w) for w in distinct), np.uint64, len(distinct))
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def shingle_hash(shingle: str) -> int:
    """The 32-bit hash of one shingle (its words joined by single spaces), computed plainly: the
    reference for `shingle_hashes` and the `hashfunc` that makes datasketch agree with `signatures`."""
    h = 0
    for k, word in enumerate(shingle.split(" ")):
        h = _word_hash(word) if k == 0 else (h * int(_FOLD) + _word_hash(word)) & _MASK64
    return int(fmix64(np.array([h], np.uint64))[0] >> np.uint64(32))


def shingle_hashes(hashes: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of all documents' word n-grams, and the document each belongs to (a document's
    shingles are contiguous). `hashes` holds all documents' word hashes in order, `counts` the
    words per document. A document shorter than n words has one shingle, all its words; an empty
    document has none."""
    counts = counts.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    short = np.flatnonzero((counts > 0) & (counts < n))
    short_hashes = np.empty(len(short), np.uint64)
    h = hashes.copy()  # h[i]: fold of the k words from i (only the first len - k + 1 are meaningful)
    for k in range(1, n + 1):
        if k > 1:
            h = h[:-1] * _FOLD + hashes[k - 1 :]
        done = counts[short] == k
        short_hashes[done] = h[starts[short[done]]]
    doc_of_word = np.repeat(np.arange(len(counts)), counts)
    full = np.flatnonzero(doc_of_word[: len(h)] == doc_of_word[n - 1 :])  # windows inside one document
    out = np.concatenate([h[full], short_hashes])
    doc_of = np.concatenate([doc_of_word[full], short])
    return (fmix64(out) >> np.uint64(32)).astype(np.uint32), doc_of


def signatures(hashes: np.ndarray, doc_of: np.ndarray, docs: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (docs x num_perm, uint32) from shingle hashes and their documents (each
    document's shingles contiguous); a document without shingles gets datasketch's empty
    signature (all EMPTY)."""
    a, b = permutations(num_perm, seed)
    out = np.full((docs, num_perm), EMPTY, np.uint32)
    mixed = _fmix32(hashes.astype(np.uint32))
    buf = np.empty((num_perm, _BLOCK), np.uint32)
    for lo in range(0, len(mixed), _BLOCK):
        x = mixed[lo : lo + _BLOCK]
        phv = buf[:, : len(x)]
        np.multiply(a, x[None, :], out=phv)
        phv += b
        block_docs = doc_of[lo : lo + _BLOCK]
        segments = np.flatnonzero(np.r_[True, block_docs[1:] != block_docs[:-1]])
        mins = np.minimum.reduceat(phv, segments, axis=1).T
        rows = block_docs[segments]  # distinct: a document's shingles are contiguous
        out[rows] = np.minimum(out[rows], mins)
    return out


def jaccard(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows x[i] and y[i] (fraction of equal values)."""
    return np.count_nonzero(x == y, axis=1) / x.shape[1]
