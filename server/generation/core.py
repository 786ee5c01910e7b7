"""What every endpoint shares, with no HTTP in it: a request's prompts prepared in one call (text, token ids, a
fill-in-the-middle hole, chat messages) with their token budget, prompts x n choices run on the engine, and the
engine request aborted however the caller leaves."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.base import Delta, Engine, SamplingSettings, StructuredOutput, TokenLogprob
from ..errors import ContextLengthExceeded, EngineFailure, EngineUnavailable, InvalidRequest
from ..fim.clean import InfillCleaner, InfillContext
from ..fim.fit import DEFAULT_RESERVE_TOKENS, Truncation, bounded, fit
from ..fim.prompt import Hole, HoleFormat
from ..fim.templates import FimTemplate
from ..metrics import RequestObserver
from .codec import Codec
from .served import ServedModel
from .tool_prompt import Toolbox
from .tool_reader import ToolCalling
from .tools import Tool, ToolChoice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chat:
    """Chat messages (OpenAI's chat shape: assistant `tool_calls`, `tool` results), formatted by the served model's
    chat template, with the tools it may call (generation/tools.py)."""

    messages: list[dict[str, Any]]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    # what the request passes the chat template beyond the messages (reasoning_effort, chat_template_kwargs):
    # a template that reads them acts on them, as vLLM passes them
    template_variables: dict[str, Any] = field(default_factory=dict)


# What a request asks to continue: text or token ids as they are, a hole to fill, or a chat.
Source = str | list[int] | Hole | Chat


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # template tokens that end the answer (special: no stop string sees them)
    infill: InfillContext | None = None  # a fill-in-the-middle prompt: its output is cleaned for the editor
    truncation: Truncation | None = None  # what trimming removed to fit the context


@dataclass(frozen=True)
class Prepared:
    """A request's prompts and sampling, its max_tokens clamped to what the context leaves the longest prompt:
    everything that can fail with a 400 has been checked."""

    prompts: tuple[Prompt, ...]
    sampling: SamplingSettings
    tools: ToolCalling | None = None  # how each answer is read for tool calls; None: no tools offered

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def truncation(self) -> Truncation | None:
        return next((p.truncation for p in self.prompts if p.truncation is not None), None)


@dataclass
class Choice:
    """One choice's output, accumulated from its deltas."""

    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.tokens += delta.token_count
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def fim_marker_problem(engine: Engine, template: FimTemplate | None) -> str | None:
    """Why the served tokenizer cannot take this FIM format (a marker that is not one token), or None.
    A marker split into pieces would be read as plain text and the model would not fill the hole."""
    if template is None:
        return None
    split = [m for m in template.markers if len(engine.tokenize(m, add_special_tokens=False)) != 1]
    if split:
        return (f"the FIM format '{template.id}' needs {', '.join(split)} as single tokens, but the served "
                f"tokenizer of {engine.model_id} splits them: the catalog's 'fim' for this model is wrong")
    return None


class GenerationCore:
    """Turns requests into engine prompts and runs them; one per served model. `hole_fill` is how a model
    without FIM tokens fills a hole (CODESERVE_HOLE_FILL): "continue" the prefix, or ask through its "chat"
    template; "auto" is "continue" (see fim/prompt.py for the measurement). `chat_template`
    (CODESERVE_CHAT_TEMPLATE) replaces the model's own."""

    def __init__(self, engine: Engine, served: ServedModel, hole_fill: str = "auto", chat_template: str | None = None):
        self.engine = engine
        self.served = served
        self.codec = Codec(engine, served.id, chat_template)
        self.toolbox = Toolbox(self.codec, served.entry.tool_parser)
        by_chat = served.fills_holes_without_fim and hole_fill == "chat"
        self.holes = HoleFormat.for_model(served.fim, self.codec, by_chat)
        # Template tokens are special: vLLM hides them from the text, so stop strings never see them. They
        # end the answer as token ids; as text (a tokenizer that does not mark them special) the cleaner cuts.
        markers = set(self.holes.markers)
        if served.fills_holes_without_fim:  # an instruct model may open another turn, whichever way it fills
            try:
                template = self.codec.chat_text([{"role": "user", "content": ""}])
            except InvalidRequest:  # no template (chat answers 400 saying so), or one that refuses an empty turn
                template = ""
            markers = {t for t in engine.special_tokens if t in template}
        self.markers = tuple(sorted(markers))
        self.marker_ids = tuple(sorted({i for m in self.markers if (i := self.codec.single_token(m)) is not None}))

    def capabilities(self) -> dict[str, Any]:
        """What this model does, as /v1/models reports it."""
        retrieval = self.served.entry.retrieval
        if retrieval is not None:  # an embedding model or a reranker: what it computes, not what it generates
            return {"retrieval": "embeddings" if retrieval.dimensions else "rerank",
                    "dimensions": retrieval.dimensions, "matryoshka_dimensions": list(retrieval.matryoshka_dimensions),
                    "max_input_tokens": self.served.max_model_len}
        fim = self.served.fim
        return {"fill_in_the_middle": fim.id if fim else ("by continuing" if self.served.fills_holes_without_fim
                                                          else None),
                "chat": self.served.entry.role == "instruct", **self.toolbox.describe(),
                "structured_output": self._takes(SamplingSettings(structured=StructuredOutput(json_object=True)))}

    def _takes(self, sampling: SamplingSettings) -> bool:
        try:
            self.engine.check(sampling)
        except InvalidRequest:
            return False
        return True

    # ---- prompts -------------------------------------------------------------------------------
    def prepare(self, sources: Sequence[Source], max_tokens: int | None,
                sampling: SamplingSettings | None = None) -> Prepared:
        """Every source as an engine prompt, and `sampling` with `max_tokens` clamped to what the context leaves
        (400 when a prompt alone is too long), checked against the vocabulary and the engine (400 naming a
        parameter it cannot honour). The one call the HTTP layer makes to prepare a request."""
        prompts = tuple(self._prompt(source) for source in sources)
        sampling = replace(sampling or SamplingSettings(), max_tokens=min(self._budget(p, max_tokens) for p in prompts))
        chat = next((s for s in sources if isinstance(s, Chat) and s.tool_choice.mode != "none"
                     and (s.tools or s.tool_choice.mode != "auto")), None)
        tools = None if chat is None else self.toolbox.calling(chat)
        if tools is not None:
            sampling = self.toolbox.sampling(tools, sampling)
        self._check_token_ids(sampling)
        self.engine.check(sampling)
        return Prepared(prompts, sampling, tools)

    def _check_token_ids(self, sampling: SamplingSettings) -> None:
        vocab = self.engine.vocab_size
        for param, ids in (("logit_bias", [token for token, _ in sampling.logit_bias]),
                           ("stop_token_ids", sampling.stop_token_ids),
                           ("allowed_token_ids", sampling.allowed_token_ids or ())):
            outside = [token for token in ids if not 0 <= token < vocab]
            if outside:
                raise InvalidRequest(f"'{param}' names token {outside[0]}, outside this model's vocabulary "
                                     f"(0..{vocab - 1})", param=param)

    def _prompt(self, source: Source) -> Prompt:
        if isinstance(source, Hole):
            return self._fill(source)
        if isinstance(source, Chat):
            self._check_length(sum(len(str(m.get("content") or "")) for m in source.messages))
            # The template already writes the special tokens (BOS included where the model has one).
            return Prompt(self.codec.tokenize(self.toolbox.chat_text(source), add_special_tokens=False))
        if isinstance(source, list):
            vocab = self.engine.vocab_size
            if any(not 0 <= t < vocab for t in source):
                raise InvalidRequest(f"token ids must lie in 0..{vocab - 1} (this model's vocabulary)", param="prompt")
            return Prompt(list(source))
        self._check_length(len(source))
        if not source:
            raise InvalidRequest("'prompt' is empty: send the text to continue", param="prompt")
        return Prompt(self.codec.tokenize(source))

    def _fill(self, hole: Hole) -> Prompt:
        """The prompt for a hole between `hole.prefix` and `hole.suffix`, in the served family's format (or its
        chat template), trimmed to fit when `hole.fit`; its output is cleaned for the editor."""
        fim = self.served.fim
        if fim is None and not self.served.fills_holes_without_fim:
            raise InvalidRequest(f"model '{self.served.id}' has no fill-in-the-middle format, so 'suffix' cannot "
                                 "be honoured; send the prefix alone", param="suffix")
        truncation = None
        counted: list[tuple[Hole, list[int]]] = []  # the last hole fit() counted: its ids, if that is the one sent

        def count(candidate: Hole) -> int:
            counted[:] = [(candidate, self.holes.token_ids(candidate))]
            return len(counted[0][1])

        if hole.fit:
            reserve = min(hole.reserve_tokens or DEFAULT_RESERVE_TOKENS, self.served.max_model_len // 2)
            room = self.served.max_model_len - reserve
            hole, truncation = fit(bounded(hole, room * self.engine.max_token_chars), count, room)
        else:
            self._check_length(len(hole.prefix) + len(hole.suffix) + sum(len(f.text) for f in hole.extra))
        ids = counted[0][1] if counted and counted[0][0] is hole else self.holes.token_ids(hole)
        if hole.typed:  # llama.cpp's `prompt`: text typed at the cursor, after the middle marker
            ids += self.codec.tokenize(hole.typed, add_special_tokens=False)
        context = InfillContext(hole.prefix + hole.typed, hole.suffix, self.markers, chat=self.holes.chat,
                                code_stops=hole.code_stops, min_indent=hole.min_indent)
        return Prompt(ids, fim.stop if fim is not None else (), self.marker_ids, context, truncation)

    def _check_length(self, characters: int) -> None:
        """Refuse, before tokenizing, text that cannot fit: no token covers more than max_token_chars
        characters, so this many characters are at least characters / max_token_chars tokens. Tokenizing
        megabytes only to refuse them would hold a CPU for seconds."""
        at_least = -(-characters // self.engine.max_token_chars)
        limit = self.served.max_model_len
        if at_least > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your prompt is at least "
                f"{at_least} tokens ({characters} characters). Please reduce the length of the prompt.",
                param="prompt")

    def _budget(self, prompt: Prompt, max_tokens: int | None) -> int:
        """max_tokens, clamped to what the context leaves; 400 when the prompt alone is too long."""
        limit = self.served.max_model_len
        used = len(prompt.token_ids)
        if used >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your prompt is {used} tokens. "
                "Please reduce the length of the prompt.", param="prompt")
        room = limit - used
        return room if max_tokens is None else min(max_tokens, room)

    # ---- running -------------------------------------------------------------------------------
    async def collect(self, prompts: Sequence[Prompt], sampling: SamplingSettings, request_id: str,
                      observer: RequestObserver) -> list[Choice]:
        """Every prompt x n choice, whole."""
        choices = [Choice() for _ in range(len(prompts) * sampling.n)]
        async for index, delta in self.run(prompts, sampling, request_id, observer):
            choices[index].add(delta)
        return choices

    async def run(self, prompts: Sequence[Prompt], sampling: SamplingSettings, request_id: str,
                  observer: RequestObserver) -> AsyncGenerator[tuple[int, Delta], None]:
        """(choice index, delta) for every prompt x n choice, as the deltas arrive."""
        if sampling.max_tokens == 0:  # nothing to generate (OpenAI allows it, e.g. with echo; engines refuse it)
            for index in range(len(prompts) * sampling.n):
                yield index, Delta(index % sampling.n, "", 0, "length")
            return
        streams = [self._one(p, sampling, f"{request_id}-{i}", observer) for i, p in enumerate(prompts)]
        if len(streams) == 1:
            # closed with this generator: a caller that stops reading (aclose) aborts the engine request at once,
            # not when the garbage collector finalizes the inner generator
            async with aclosing(streams[0]) as stream:
                async for delta in stream:
                    yield delta.index, delta
            return
        async for prompt_index, delta in _merge(streams):
            yield prompt_index * sampling.n + delta.index, delta

    async def prefill(self, prompts: Sequence[Prompt], sampling: SamplingSettings, request_id: str,
                      observer: RequestObserver) -> None:
        """Run each prompt through the engine without answering, so its prefix is cached for the requests that
        follow: llama.cpp's `n_predict: 0`, which llama.vscode sends to warm the server with the editor's context
        (src/llama-server.ts, createRequestPayload's noPredict). The engine computes one token (counted in the
        metrics: it was computed), which is dropped; a client that goes away aborts it as any request."""
        once = replace(sampling, max_tokens=1, n=1, temperature=0.0, structured=None, logprobs=None)
        for index, prompt in enumerate(prompts):
            warm = self._one(replace(prompt, infill=None), once, f"{request_id}-{index}", observer)
            async with aclosing(warm) as deltas:
                async for _ in deltas:
                    pass

    async def _one(self, prompt: Prompt, sampling: SamplingSettings, request_id: str,
                   observer: RequestObserver) -> AsyncGenerator[Delta, None]:
        sampling = replace(sampling, stop=tuple(sampling.stop) + prompt.stop,
                           stop_token_ids=tuple(sampling.stop_token_ids) + prompt.stop_token_ids)
        finished = False
        observer.prompt_tokens(len(prompt.token_ids))
        cleaners: dict[int, InfillCleaner] = {}
        ended: set[int] = set()  # choices the cleaner ended: their engine output is no longer wanted
        try:
            async for delta in self.engine.generate(prompt.token_ids, sampling, request_id):
                if not delta.copied:
                    observer.tokens(delta.token_count)
                if prompt.infill is not None:
                    if delta.index in ended:
                        continue
                    cleaner = cleaners.setdefault(delta.index, InfillCleaner(prompt.infill))
                    delta = replace(delta, text=cleaner.feed(delta.text, final=delta.finish_reason is not None))
                    if cleaner.reason is not None:
                        ended.add(delta.index)
                        delta = replace(delta, finish_reason=delta.finish_reason or "stop")
                    if delta.finish_reason is not None:
                        observer.cleaned(cleaner.actions)
                yield delta
                if len(ended) == sampling.n:
                    break  # every choice ended early: the finally below aborts the engine's request
            else:
                finished = True
        except EngineUnavailable as exc:
            raise EngineUnavailable(f"the engine stopped while serving request {request_id}: {exc}; the server "
                                    "restarts, retry shortly") from exc
        except InvalidRequest:  # the engine refused the request as it ran it (llama-server's 400): the client's error
            raise
        except Exception as exc:  # the engine's text (paths, device details) is for the log, not the client
            log.error("request %s failed in the engine: %s", request_id, exc, exc_info=exc)
            raise EngineFailure(f"the engine failed on request {request_id}; the server log has the details") from exc
        finally:
            if not finished:  # client went away, or an error: free the engine's slot now
                await asyncio.shield(self.engine.abort(request_id))


async def _merge(streams: Sequence[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave several engine streams as their deltas arrive; cancel all if the consumer stops."""
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, None))
        except BaseException as exc:  # forwarded to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
