"""What every endpoint shares, with no HTTP in it: the served model, prompt preparation (FIM, chat),
context checks, running prompts x n choices on the engine, and aborting however the caller leaves."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from ..engine.base import Delta, Engine, EngineDead, SamplingSettings
from ..errors import ContextLengthExceeded, EngineFailure, EngineUnavailable, InvalidRequest, ModelNotFound
from ..fim import HOLE_STOP, FenceFilter, FimTemplate, hole_messages, template_for
from ..metrics import RequestObserver
from ..planner.catalog import ModelEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The model as it runs: its id, catalog entry and the context the engine reports (read once)."""

    id: str
    entry: ModelEntry
    max_model_len: int
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def fim(self) -> FimTemplate | None:
        return template_for(self.entry.fim)

    @property
    def fills_holes_by_chat(self) -> bool:
        """No FIM tokens, but an instruct model: holes are filled through its chat template."""
        return self.fim is None and self.entry.role == "instruct"

    def accepts(self, name: str | None) -> bool:
        return name in (None, "", self.id, self.entry.repo)


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    stop: tuple[str, ...] = ()
    strip_fence: bool = False  # a chat model fills the hole: drop the Markdown fence it may open with


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
    """Turns requests into engine prompts and runs them; one per served model."""

    def __init__(self, engine: Engine, served: ServedModel):
        self.engine = engine
        self.served = served

    def check_model(self, name: str | None) -> None:
        if not self.served.accepts(name):
            raise ModelNotFound(f"the model '{name}' does not exist; this server serves '{self.served.id}'",
                                param="model")

    # ---- prompts -------------------------------------------------------------------------------
    def text_prompt(self, text: str | list[int], suffix: str | None = None, infill: bool = False) -> Prompt:
        """The prompt for `text`; fill-in-the-middle when a suffix is given, or always with `infill`
        (llama.cpp's /infill keeps the FIM format for an empty suffix: the cursor is at the end)."""
        if isinstance(text, list):
            if suffix:
                raise InvalidRequest("'suffix' needs a text prompt, not token ids", param="suffix")
            vocab = self.engine.vocab_size
            if any(not 0 <= t < vocab for t in text):
                raise InvalidRequest(f"token ids must lie in 0..{vocab - 1} (this model's vocabulary)", param="prompt")
            return Prompt(list(text))
        suffix = suffix or ""
        self._check_length(len(text) + len(suffix))
        if not suffix and not infill:
            if not text:
                raise InvalidRequest("'prompt' is empty: send the text to continue", param="prompt")
            return Prompt(self.engine.tokenize(text))
        fim = self.served.fim
        if fim is not None:
            return Prompt(self.engine.tokenize(fim.prompt(text, suffix)), fim.stop)
        if self.served.fills_holes_by_chat:
            chat = self.chat_prompt(hole_messages(text, suffix))
            return Prompt(chat.token_ids, HOLE_STOP, strip_fence=True)
        raise InvalidRequest(f"model '{self.served.id}' has no fill-in-the-middle format, so 'suffix' cannot be "
                             "honoured; send the prefix alone", param="suffix")

    def chat_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        self._check_length(sum(len(m["content"]) for m in messages))
        # The template already writes the special tokens (BOS included where the model has one).
        return Prompt(self.engine.tokenize(self.engine.chat_prompt(messages), add_special_tokens=False))

    def extend(self, prompt: Prompt, text: str) -> Prompt:
        """`prompt` followed by `text` (llama.cpp's /infill: what was typed after the middle marker)."""
        return replace(prompt, token_ids=prompt.token_ids + self.engine.tokenize(text, add_special_tokens=False))

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

    def token_budget(self, prompt: Prompt, max_tokens: int | None) -> int:
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
    async def run(self, prompts: Sequence[Prompt], sampling: SamplingSettings, request_id: str,
                  observer: RequestObserver) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, delta) for every prompt x n choice, as the deltas arrive."""
        if sampling.max_tokens == 0:  # nothing to generate (OpenAI allows it, e.g. with echo; engines refuse it)
            for index in range(len(prompts) * sampling.n):
                yield index, Delta(index % sampling.n, "", 0, "length")
            return
        streams = [self._one(p, sampling, f"{request_id}-{i}", observer) for i, p in enumerate(prompts)]
        if len(streams) == 1:
            async for delta in streams[0]:
                yield delta.index, delta
            return
        async for prompt_index, delta in _merge(streams):
            yield prompt_index * sampling.n + delta.index, delta

    async def _one(self, prompt: Prompt, sampling: SamplingSettings, request_id: str,
                   observer: RequestObserver) -> AsyncIterator[Delta]:
        sampling = replace(sampling, stop=tuple(sampling.stop) + prompt.stop)
        finished = False
        observer.prompt_tokens(len(prompt.token_ids))
        fences: dict[int, FenceFilter] = {}
        try:
            async for delta in self.engine.generate(prompt.token_ids, sampling, request_id):
                if not delta.copied:
                    observer.tokens(delta.token_count)
                if prompt.strip_fence:
                    fence = fences.setdefault(delta.index, FenceFilter())
                    delta = replace(delta, text=fence.feed(delta.text, final=delta.finish_reason is not None))
                yield delta
            finished = True
        except EngineDead as exc:
            raise EngineUnavailable(f"the engine stopped while serving request {request_id}: {exc}; the server "
                                    "restarts, retry shortly") from exc
        except Exception as exc:  # the engine's text (paths, device details) is for the log, not the client
            log.error("request %s failed in the engine: %s", request_id, exc, exc_info=exc)
            raise EngineFailure(f"the engine failed on request {request_id}; the server log has the details") from exc
        finally:
            if not finished:  # client went away, or an error: free the engine's slot now
                await asyncio.shield(self.engine.abort(request_id))


async def _merge(streams: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
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
