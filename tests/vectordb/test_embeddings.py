"""The local embedder: bfloat16 arithmetic where the CPU has it, with vectors that stand in for float32 ones."""

import math

import pytest

from vectordb import embeddings
from vectordb.embeddings import LocalEmbedder, local_precision

PASSAGES = [
    "The fontenc package selects font encodings such as T1 for European languages.",
    "libtasn1 parses ASN.1 structures described in a definition file and encodes them in DER.",
    "A document class defines the overall layout: article, report, book and letter are standard.",
    "Use \\DeclareFontFamily and \\DeclareFontShape to make a new font family known to LaTeX.",
    "Hyphenation patterns depend on the language and on the font encoding of the text.",
    "The certificate's distinguished name is read with asn1_read_value on the element path.",
]
QUERIES = [
    ("Which encoding do European languages use?", 0),
    ("How are ASN.1 definitions parsed and DER encoded?", 1),
    ("What standard document classes exist?", 2),
    ("How do I declare a new font family?", 3),
]


@pytest.fixture(scope="module")
def float32_embedder():
    return LocalEmbedder(precision="float32")


@pytest.fixture(scope="module")
def bfloat16_embedder(float32_embedder):
    embedder = LocalEmbedder.__new__(LocalEmbedder)  # the same loaded weights, another precision
    embedder.__dict__.update(float32_embedder.__dict__, precision="bfloat16")
    return embedder


def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_bfloat16_vectors_agree_with_float32_ones(float32_embedder, bfloat16_embedder):
    exact = float32_embedder.embed_documents(PASSAGES)
    fast = bfloat16_embedder.embed_documents(PASSAGES)

    for exact_vector, fast_vector in zip(exact, fast, strict=True):
        assert len(fast_vector) == 384
        assert math.isclose(math.sqrt(_cosine(fast_vector, fast_vector)), 1.0, abs_tol=1e-5)
        assert _cosine(exact_vector, fast_vector) > 0.9999


def test_a_bfloat16_query_finds_what_a_float32_query_finds_in_float32_vectors(float32_embedder, bfloat16_embedder):
    stored = float32_embedder.embed_documents(PASSAGES)  # a database filled before the switch

    for question, expected in QUERIES:
        query = bfloat16_embedder.embed_query(question)
        ranking = sorted(range(len(stored)), key=lambda index: -_cosine(query, stored[index]))
        assert ranking[0] == expected, question


def test_auto_precision_uses_bfloat16_only_with_native_cpu_support(monkeypatch):
    monkeypatch.setattr(embeddings, "native_bfloat16_supported", lambda: True)
    assert local_precision("auto") == "bfloat16"
    monkeypatch.setattr(embeddings, "native_bfloat16_supported", lambda: False)
    assert local_precision("auto") == "float32"
    assert local_precision("bfloat16") == "bfloat16"  # asked for explicitly: honoured, emulated or not
    with pytest.raises(ValueError, match="float16"):
        local_precision("float16")


def test_the_configured_embedder_follows_the_precision_setting(settings):
    settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSIONS = "all-MiniLM-L6-v2", 384
    settings.EMBEDDING_LOCAL_PRECISION = "float32"

    assert embeddings.get_embedder().precision == "float32"
