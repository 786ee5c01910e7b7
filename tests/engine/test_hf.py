"""The Transformers engine on tiny random models of the architectures vLLM refuses (CodeGen, XGLM, T5, a composite
encoder-decoder shaped like CodeT5+ 2B-16B): streamed deltas, batches that give each row what it gets alone, stops,
abort, sampling settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from server.engine.base import Delta, SamplingSettings, StructuredOutput
from server.engine.hf import TransformersEngine
from server.errors import InvalidRequest
from server.planner.catalog import Catalog
from server.planner.launch import Launch
from server.prepare import prepare_bundled
from tests.conftest import make_settings
from tests.tiny_models import build

KINDS = ("codegen", "xglm", "t5", "encoder_decoder")
PROMPTS = ("def add(a, b):", "import os\nx = 1", "class Foo:")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> dict[str, Path]:
    tokenizer = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    root = tmp_path_factory.mktemp("tiny")
    return {kind: build(kind, root / kind, tokenizer, ("<extra_id_0>", "<extra_id_1>") if kind == "t5" else ())
            for kind in KINDS}


def launch_for(path: Path, max_num_seqs: int = 8) -> Launch:
    return Launch(model=str(path), served_name=path.name, device="cpu", dtype="float32", online_quantization=None,
                  tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=512, max_num_seqs=max_num_seqs,
                  max_num_batched_tokens=4096, prefix_caching=False, kv_block_tokens=None, kv_cache_dtype="auto",
                  gpu_memory_fraction=None, kv_cache_bytes=None, eager=True, trust_remote_code=False,
                  engine="transformers")


@pytest.fixture(params=KINDS)
def engine(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]) -> Iterator[TransformersEngine]:
    started = TransformersEngine.start(launch_for(tiny_dirs[request.param]))
    yield started
    asyncio.run(started.shutdown())


async def _collect(deltas: AsyncIterator) -> tuple[str, int, str | None, int]:
    text, tokens, finish, chunks = "", 0, None, 0
    async for delta in deltas:
        text, tokens, chunks = text + delta.text, tokens + delta.token_count, chunks + 1
        finish = delta.finish_reason or finish
    return text, tokens, finish, chunks


def _greedy(max_tokens: int = 12, **extra: object) -> SamplingSettings:
    return SamplingSettings(max_tokens=max_tokens, temperature=0, **extra)  # type: ignore[arg-type]


def test_streamed_greedy_rows_are_the_same_batched_as_alone(engine: TransformersEngine) -> None:
    async def run() -> tuple[list, list]:
        alone = [await _collect(engine.generate(p, _greedy(), f"a{i}")) for i, p in enumerate(PROMPTS)]
        together = await asyncio.gather(*[_collect(engine.generate(p, _greedy(), f"b{i}"))
                                          for i, p in enumerate(PROMPTS)])
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert [a[:3] for a in alone] == [t[:3] for t in together]  # left padding and masks change nothing
    for _, tokens, finish, chunks in alone:
        assert (tokens, finish) == (12, "length") and chunks >= 2  # streamed, not one blob
    assert engine.num_unfinished_requests() == 0


def test_requests_that_arrive_while_a_batch_runs_share_the_next(engine: TransformersEngine) -> None:
    async def run() -> None:
        first = asyncio.create_task(_collect(engine.generate("def long():", _greedy(60), "long")))
        await asyncio.sleep(0.05)  # the worker has taken it: the next three wait together
        await asyncio.gather(*[_collect(engine.generate(p, _greedy(), f"w{i}")) for i, p in enumerate(PROMPTS)])
        await first

    asyncio.run(run())
    assert max(engine.batch_rows[-3:]) >= 3  # together (a decoder-only batch also takes in the long one's rest)


def test_a_late_request_waits_steps_not_a_whole_generation(engine: TransformersEngine) -> None:
    """A decoder-only batch yields to waiting requests after PREEMPT_AFTER_STEPS steps; its rows resume with them
    and give what they give alone."""
    from server.engine.hf import PREEMPT_AFTER_STEPS

    if engine.encoder_decoder:
        pytest.skip("encoder-decoder batches run to their end (their decoder inputs would need padding to resume)")
    long_tokens = 240
    alone = asyncio.run(_collect(engine.generate("def long():", _greedy(long_tokens), "alone")))

    async def run() -> tuple[tuple, int, tuple]:
        produced = 0
        first_late: list[int] = []

        async def long_stream() -> tuple:
            nonlocal produced
            text, tokens, finish = "", 0, None
            async for delta in engine.generate("def long():", _greedy(long_tokens), "long"):
                text, tokens, produced = text + delta.text, tokens + delta.token_count, produced + delta.token_count
                finish = delta.finish_reason or finish
            return text, tokens, finish

        async def late() -> tuple:
            while produced < 4:  # the long one is under way
                await asyncio.sleep(0.001)
            result = []
            async for delta in engine.generate("x = 1", _greedy(8), "late"):
                if not first_late:
                    first_late.append(produced)
                result.append(delta)
            return tuple(result)

        long_result, late_deltas = await asyncio.gather(long_stream(), late())
        return long_result, first_late[0], late_deltas

    long_result, long_tokens_before_late, late_deltas = asyncio.run(run())
    assert long_tokens_before_late < long_tokens  # it did not wait for the whole long generation
    assert long_tokens_before_late <= 4 + PREEMPT_AFTER_STEPS + 8  # a slice, give or take the arrival
    assert long_result[:3] == alone[:3]  # resumed from what it generated: the same greedy text, count and finish
    assert sum(d.token_count for d in late_deltas) == 8


def test_leaving_a_stream_stops_its_row(engine: TransformersEngine) -> None:
    async def run() -> None:
        stream = engine.generate("def spin():", _greedy(400), "gone")
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client left: the request is aborted
        done = await _collect(engine.generate("x = 1", _greedy(4), "next"))
        assert done[1] == 4

    before = engine.tokens_generated
    asyncio.run(run())
    assert engine.tokens_generated - before < 100  # far fewer than the 400 the aborted row asked for
    assert engine.num_unfinished_requests() == 0


def test_stop_strings_and_max_tokens(engine: TransformersEngine, tiny_dirs: dict[str, Path]) -> None:
    full = asyncio.run(_collect(engine.generate(PROMPTS[0], _greedy(16), "full")))[0]
    if len(full.strip()) < 6:
        pytest.skip("this random model decodes to special tokens only: no text to stop in")
    stop = full[3:6]
    cut = asyncio.run(_collect(engine.generate(PROMPTS[0], _greedy(16, stop=("never seen", stop)), "cut")))
    assert cut[0] == full[:full.index(stop)] and cut[2] == "stop"

    async def last(deltas: AsyncIterator[Delta]) -> Delta:
        return [delta async for delta in deltas][-1]

    ended = asyncio.run(last(engine.generate(PROMPTS[0], _greedy(16, stop=("never seen", stop)), "named")))
    assert ended.stop_string == stop  # the stop that matched, as vLLM's stop_reason names it


def test_seeded_sampling_repeats_and_penalties_change_greedy_output(engine: TransformersEngine) -> None:
    sampled = SamplingSettings(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    first = asyncio.run(_collect(engine.generate(PROMPTS[1], sampled, "s1")))
    again = asyncio.run(_collect(engine.generate(PROMPTS[1], sampled, "s2")))
    assert first[0] == again[0]
    plain = asyncio.run(_collect(engine.generate(PROMPTS[2], _greedy(24), "p0")))
    penalized = asyncio.run(_collect(engine.generate(PROMPTS[2], _greedy(24, frequency_penalty=2.0,
                                                                         presence_penalty=2.0), "p1")))
    assert plain[1] == penalized[1] == 24
    words = plain[0].split()
    if len(words) != len(set(words)):  # greedy repeated itself: the penalties must steer it elsewhere
        assert penalized[0] != plain[0]


def test_top_k_and_repetition_penalty_are_honoured(engine: TransformersEngine) -> None:
    """top_k 1 samples only the most likely token: the same text as greedy, at any temperature and seed."""
    greedy = asyncio.run(_collect(engine.generate(PROMPTS[0], _greedy(12), "g")))
    top1 = SamplingSettings(max_tokens=12, temperature=1.5, top_k=1, seed=3)
    assert asyncio.run(_collect(engine.generate(PROMPTS[0], top1, "k")))[0] == greedy[0]
    engine.check(replace(top1, min_p=0.1, repetition_penalty=1.3))  # honoured: no refusal
    penalized = asyncio.run(_collect(engine.generate(PROMPTS[2], _greedy(24, repetition_penalty=2.0), "r")))
    assert penalized[1] == 24


@pytest.mark.parametrize(("field", "value"), [
    ("ignore_eos", True), ("min_tokens", 2), ("logit_bias", ((1, 5.0),)), ("allowed_token_ids", (1, 2)),
    ("bad_words", ("x",)), ("include_stop_str_in_output", True), ("skip_special_tokens", False),
    ("structured", StructuredOutput(json_object=True)),
])
def test_parameters_it_cannot_honour_are_refused_by_name(tiny_dirs: dict[str, Path], field: str, value: object) -> None:
    engine = TransformersEngine.start(launch_for(tiny_dirs["codegen"]))
    try:
        with pytest.raises(InvalidRequest, match="Transformers engine") as refused:
            engine.check(replace(_greedy(4), **{field: value}))
        assert refused.value.param == field
    finally:
        asyncio.run(engine.shutdown())


def test_logprobs_are_the_raw_distributions(engine: TransformersEngine) -> None:
    async def run() -> list:
        return [delta async for delta in engine.generate(PROMPTS[0], _greedy(6, logprobs=2), "lp")]

    deltas = asyncio.run(run())
    scored = [entry for delta in deltas for entry in delta.logprobs]
    assert len(scored) == sum(d.token_count for d in deltas if d.finish_reason != "stop" or d.text)
    for entry in scored:  # greedy: the sampled token is the most likely one, listed among the top 2
        assert entry.logprob == max(entry.top.values()) <= 0 and 1 <= len(entry.top) <= 3
    if not engine.encoder_decoder:  # the first token's: what the model itself gives for the prompt
        import torch

        ids = torch.tensor([engine.tokenize(PROMPTS[0])])
        with torch.inference_mode():
            expected = torch.log_softmax(engine._model(ids).logits[0, -1].float(), dim=-1).max().item()
        assert scored[0].logprob == pytest.approx(expected, abs=1e-4)
    plain = asyncio.run(_collect(engine.generate(PROMPTS[0], _greedy(6), "plain")))
    assert "".join(d.text for d in deltas) == plain[0]  # scoring changes nothing


def test_n_rows_per_request(engine: TransformersEngine) -> None:
    async def run() -> dict[int, str]:
        texts: dict[int, str] = {}
        async for delta in engine.generate(PROMPTS[0], SamplingSettings(max_tokens=6, temperature=0, n=3), "n"):
            texts[delta.index] = texts.get(delta.index, "") + delta.text
        return texts

    texts = asyncio.run(run())
    assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) == 1  # greedy copies agree


def test_a_request_with_more_rows_than_the_plan_batches_runs_them_in_turn(tiny_dirs: dict[str, Path]) -> None:
    engine = TransformersEngine.start(launch_for(tiny_dirs["codegen"], max_num_seqs=2))
    try:
        async def run() -> dict[int, tuple[str, str | None]]:
            texts: dict[int, tuple[str, str | None]] = {}
            sampling = SamplingSettings(max_tokens=5, temperature=0, n=5)
            async for delta in engine.generate(PROMPTS[0], sampling, "wide"):
                text, finish = texts.get(delta.index, ("", None))
                texts[delta.index] = (text + delta.text, delta.finish_reason or finish)
            return texts

        texts = asyncio.run(run())
        assert sorted(texts) == [0, 1, 2, 3, 4] and {finish for _, finish in texts.values()} == {"length"}
        assert len({text for text, _ in texts.values()}) == 1  # greedy copies agree, whichever batch ran them
        assert max(engine.batch_rows) == 2 and sum(engine.batch_rows) >= 5  # never more than the plan budgets
    finally:
        asyncio.run(engine.shutdown())


def test_t5_fills_a_sentinel_hole_starting_after_the_sentinel(tiny_dirs: dict[str, Path]) -> None:
    engine = TransformersEngine.start(launch_for(tiny_dirs["t5"]))
    try:
        sentinel, closing = (engine.tokenize(t, add_special_tokens=False) for t in ("<extra_id_0>", "<extra_id_1>"))
        assert len(sentinel) == len(closing) == 1 and "<extra_id_0>" in engine.special_tokens
        prompt = engine.tokenize("def add(a, b):\n    <extra_id_0>\n")
        result = asyncio.run(_collect(engine.generate(prompt, _greedy(8, stop_token_ids=tuple(closing)), "fim")))
        assert result[2] in ("stop", "length") and "<extra_id_0>" not in result[0]
        assert engine.batch_rows and engine.describe()["name"] == "transformers"
    finally:
        asyncio.run(engine.shutdown())


def test_codet5p_decoder_continues_the_prompt_as_its_model_card_does(tiny_dirs: dict[str, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """CodeT5+ 2B-16B is remote code (not downloadable here); the tiny composite has its shape, marked as its kind."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from server.engine import hf

    monkeypatch.setattr(hf, "DECODER_CONTINUES_PROMPT", {"encoder-decoder"})
    path = tiny_dirs["encoder_decoder"]
    engine = TransformersEngine.start(launch_for(path))
    try:
        same_length = ["def add(a, b):", "def sub(a, b):"]
        assert len(engine.tokenize(same_length[0])) == len(engine.tokenize(same_length[1]))
        prompts = [*same_length, "import os"]

        async def run() -> list:
            return list(await asyncio.gather(*[_collect(engine.generate(p, _greedy(10), f"c{i}"))
                                               for i, p in enumerate(prompts)]))

        served = asyncio.run(run())
        model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        for prompt, (text, tokens, _, _) in zip(prompts, served, strict=True):
            ids = torch.tensor([engine.tokenize(prompt)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids,
                                 max_new_tokens=10, do_sample=False, pad_token_id=engine._pad)
            new = out[0, -10:].tolist()  # the model card's call: the decoder continues the prompt
            assert (text, tokens) == (engine._tokenizer.decode(new, skip_special_tokens=True), 10)
        # one prompt length per batch: its decoder's padding would not be masked
        assert max(engine.batch_rows) <= 2 and sum(engine.batch_rows) == 3
    finally:
        asyncio.run(engine.shutdown())


def test_a_missing_model_fails_to_start_naming_it(tmp_path: Path) -> None:
    from server.engine.base import EngineStartError

    with pytest.raises(EngineStartError, match="Transformers failed to load"):
        TransformersEngine.start(launch_for(tmp_path / "nothing-here"))


def test_remote_code_for_another_transformers_fails_at_once_naming_both_versions(tmp_path: Path) -> None:
    from dataclasses import replace

    import transformers

    from server.engine.base import EngineStartError

    launch = replace(launch_for(tmp_path / "codet5p-2b"), trust_remote_code=True, transformers_version="<4.50")
    with pytest.raises(EngineStartError, match=rf"runs on transformers<4.50; this environment has "
                                               rf"{transformers.__version__}"):
        TransformersEngine.start(launch)  # before looking for the model: the directory does not even exist
    with pytest.raises(EngineStartError, match=r"failed to load .* older Transformers"):
        TransformersEngine.start(replace(launch, transformers_version=">=4.0"))  # passes the check, then no files


def test_placement_spreads_layers_over_the_plans_gpus(tiny_dirs: dict[str, Path]) -> None:
    from dataclasses import replace

    from server.engine.hf_load import device_placement

    cpu = launch_for(tiny_dirs["codegen"])
    assert device_placement(cpu, []) == {}
    one = replace(cpu, device="cuda", devices=(1,), gpu_memory_fraction=0.9)
    assert device_placement(one, [80, 80]) == {"device_map": {"": 1}}
    spread = replace(cpu, device="cuda", pipeline_parallel_size=2, gpu_memory_fraction=0.5)
    assert device_placement(spread, [100, 200, 300]) == {"device_map": "auto", "max_memory": {0: 50, 1: 100}}
