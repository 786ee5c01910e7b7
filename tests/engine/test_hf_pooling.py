"""The Transformers retrieval engine on tiny random BERTs: a batch gives each input the vector it gets alone,
Matryoshka cuts are renormalised, scores are the classifier's sigmoid, and generation is refused as a 400."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from server.engine.hf_pooling import TransformersPooler
from server.errors import InvalidRequest
from server.planner.catalog import Catalog
from server.prepare import prepare_bundled
from tests.conftest import make_settings
from tests.tiny_models import build_retrieval, retrieval_launch

TEXTS = ["def add(a, b): return a + b", "x", "class A:\n    pass\n" * 5]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[dict[str, TransformersPooler]]:
    tokenizer = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    root = tmp_path_factory.mktemp("tiny-pooling")
    embedder, reranker = build_retrieval("embedding", root / "e", tokenizer), build_retrieval("reranker", root / "r",
                                                                                              tokenizer)
    started = {"embed": TransformersPooler.start(retrieval_launch(embedder, "embed", "mean", 128)),
               "score": TransformersPooler.start(retrieval_launch(reranker, "score", "cls", 128))}
    yield started
    for engine in started.values():
        asyncio.run(engine.shutdown())


def test_a_batch_gives_each_input_its_vector_alone(engines: dict[str, TransformersPooler]) -> None:
    engine = engines["embed"]
    ids = [engine.tokenize(t) for t in TEXTS]
    together = asyncio.run(engine.embed(ids, None, "b"))
    alone = [asyncio.run(engine.embed([i], None, f"a{n}"))[0] for n, i in enumerate(ids)]
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
        assert sum(x * x for x in a) == pytest.approx(1.0, abs=1e-5)


def test_a_matryoshka_cut_is_renormalised(engines: dict[str, TransformersPooler]) -> None:
    engine = engines["embed"]
    ids = [engine.tokenize(TEXTS[0])]
    full = asyncio.run(engine.embed(ids, None, "f"))[0]
    cut = asyncio.run(engine.embed(ids, 32, "c"))[0]
    norm = sum(x * x for x in full[:32]) ** 0.5
    assert len(cut) == 32 and cut == pytest.approx([x / norm for x in full[:32]], abs=1e-5)


def test_scores_are_probabilities_in_the_pairs_order(engines: dict[str, TransformersPooler]) -> None:
    engine = engines["score"]
    pairs = [engine.pair("stack", t) for t in TEXTS]
    together = asyncio.run(engine.score(pairs, "s"))
    alone = [asyncio.run(engine.score([p], f"s{n}"))[0] for n, p in enumerate(pairs)]
    assert together == pytest.approx(alone, abs=1e-5) and all(0 < s < 1 for s in together)


def test_generation_is_refused_as_the_clients_error(engines: dict[str, TransformersPooler]) -> None:
    async def generate() -> None:
        from server.engine.base import SamplingSettings

        async for _ in engines["embed"].generate("def", SamplingSettings(), "g"):
            pass

    with pytest.raises(InvalidRequest, match="generates no text"):
        asyncio.run(generate())
