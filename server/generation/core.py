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
from ..engine.chat import ChatTemplateError
from ..errors import ContextLengthExceeded, EngineFailure, EngineUnavailable, InvalidRequest, ModelNotFound
from ..fim import FimTemplate, template_for
from ..metrics import RequestObserver
from ..planner.catalog import ModelEntry
from .hole import DEFAULT_RESERVE_TOKENS, Hole, HoleFormat, Truncation, fit, repo_format
from .infill import InfillCleaner, InfillContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The model as it runs: its id, catalog entry and the context the engine reports (read once)."""

    id: str
    entry: ModelEntry
    max_model_len: int
    created: int = field(default_factory=lambda: int(time.time()))
    adapters: tuple[str, ...] = ()  # LoRA adapters served over this model, by name

    @property
    def fim(self) -> FimTemplate | None:
        return template_for(self.entry.fim)

    @property
    def fills_holes_without_fim(self) -> bool:
        """No FIM tokens, but an instruct model: holes are filled by continuing the prefix or by chat."""
        return self.fim is None and self.entry.role == "instruct"

    def accepts(self, name: str | None) -> bool:
        return name in (None, "", self.id, self.entry.repo, *self.adapters)

    def adapter(self, name: str | None) -> str | None:
        """The LoRA adapter a request's `model` names, or None for the base model."""
        return name if name in self.adapters else None


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # template tokens that end the answer (special: no stop string sees them)
    infill: InfillContext | None = None  # a fill-in-the-middle prompt: its output is cleaned for the editor
    truncation: Truncation | None = None  # what trimming removed to fit the context


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
    template; "auto" is "continue" (see hole.py for the measurement). `chat_template` (CODESERVE_CHAT_TEMPLATE)
    replaces the model's own."""

    def __init__(self, engine: Engine, served: ServedModel, hole_fill: str = "auto", chat_template: str | None = None):
        self.engine = engine
        self.served = served
        self.chat_template = chat_template
        fim = served.fim
        by_chat = served.fills_holes_without_fim and hole_fill == "chat"
        self.holes = HoleFormat(fim, repo_format(fim, self._single_token), self._chat_text if by_chat else None)
        # Template tokens are special: vLLM hides them from the text, so stop strings never see them. They
        # end the answer as token ids; as text (a tokenizer that does not mark them special) the cleaner cuts.
        if fim is not None:
            markers = {*fim.markers, *fim.stop, *(self.holes.repo.markers if self.holes.repo else ())}
        elif served.fills_holes_without_fim:  # an instruct model may open another turn, whichever way it fills
            try:
                template = self._chat_text([{"role": "user", "content": ""}])
            except InvalidRequest:  # no template (chat answers 400 saying so), or one that refuses an empty turn
                template = ""
            markers = {t for t in engine.special_tokens if t in template}
        else:
            markers = set()
        self.markers = tuple(sorted(markers))
        self.marker_ids = tuple(sorted({ids[0] for m in self.markers if len(ids := self._ids(m)) == 1}))

    def _ids(self, text: str) -> list[int]:
        return self.engine.tokenize(text, add_special_tokens=False)

    def _single_token(self, text: str) -> bool:
        return len(self._ids(text)) == 1

    def check_model(self, name: str | None) -> None:
        if not self.served.accepts(name):
            raise ModelNotFound(f"the model '{name}' does not exist; this server serves '{self.served.id}'",
                                param="model")

    # ---- prompts -------------------------------------------------------------------------------
    def text_prompt(self, text: str | list[int]) -> Prompt:
        """The prompt for plain text or token ids, continued as they are."""
        if isinstance(text, list):
            vocab = self.engine.vocab_size
            if any(not 0 <= t < vocab for t in text):
                raise InvalidRequest(f"token ids must lie in 0..{vocab - 1} (this model's vocabulary)", param="prompt")
            return Prompt(list(text))
        self._check_length(len(text))
        if not text:
            raise InvalidRequest("'prompt' is empty: send the text to continue", param="prompt")
        return Prompt(self.engine.tokenize(text))

    def fill(self, hole: Hole) -> Prompt:
        """The prompt for a hole between `hole.prefix` and `hole.suffix`, in the served family's format (or its
        chat template), trimmed to fit when `hole.fit`; its output is cleaned for the editor."""
        fim = self.served.fim
        if fim is None and not self.served.fills_holes_without_fim:
            raise InvalidRequest(f"model '{self.served.id}' has no fill-in-the-middle format, so 'suffix' cannot "
                                 "be honoured; send the prefix alone", param="suffix")
        truncation = None
        if hole.fit:
            reserve = min(hole.reserve_tokens or DEFAULT_RESERVE_TOKENS, self.served.max_model_len // 2)
            hole, truncation = fit(self._bounded(hole, reserve), self._prompt_tokens, self.served.max_model_len
                                   - reserve)
        else:
            self._check_length(len(hole.prefix) + len(hole.suffix) + sum(len(f.text) for f in hole.extra))
        context = InfillContext(hole.prefix, hole.suffix, self.markers, chat=self.holes.chat_prompt is not None,
                                code_stops=hole.code_stops, min_indent=hole.min_indent)
        stop = fim.stop if fim is not None else ()
        return Prompt(self._ids_of(self.holes.text(hole)), stop, self.marker_ids, context, truncation)

    def _ids_of(self, prompt_text: str) -> list[int]:
        # FIM prompts and continued prefixes take the tokenizer's BOS where the model has one; a chat template
        # writes its own.
        return self.engine.tokenize(prompt_text, add_special_tokens=self.holes.chat_prompt is None)

    def _prompt_tokens(self, hole: Hole) -> int:
        return len(self._ids_of(self.holes.text(hole)))

    def _bounded(self, hole: Hole, reserve: int) -> Hole:
        """No token covers more than max_token_chars characters: text beyond (context x that) characters
        cannot fit, so it is cut by characters before the tokenizer sees it (megabytes would hold a CPU)."""
        room = (self.served.max_model_len - reserve) * self.engine.max_token_chars
        if len(hole.prefix) > room:
            hole = replace(hole, prefix=hole.prefix[len(hole.prefix) - room:])
        if len(hole.suffix) > room:
            hole = replace(hole, suffix=hole.suffix[:room])
        return hole

    def chat_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        self._check_length(sum(len(m["content"]) for m in messages))
        # The template already writes the special tokens (BOS included where the model has one).
        return Prompt(self.engine.tokenize(self._chat_text(messages), add_special_tokens=False))

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.engine.chat_prompt(messages, self.chat_template)
        except ChatTemplateError as exc:
            if exc.missing:
                raise InvalidRequest(
                    f"model '{self.served.id}' has no chat template, so chat messages cannot be formatted for it: "
                    "send the text as a prompt to /v1/completions, or give the server one with "
                    "CODESERVE_CHAT_TEMPLATE (a Jinja file, as vLLM's --chat-template)", param="model") from exc
            raise InvalidRequest(f"the chat template of model '{self.served.id}' refused the messages: {exc}",
                                 param="messages") from exc

    def extend(self, prompt: Prompt, text: str) -> Prompt:
        """`prompt` followed by `text` (llama.cpp's /infill: what was typed after the middle marker)."""
        infill = prompt.infill and replace(prompt.infill, prefix=prompt.infill.prefix + text)
        return replace(prompt, token_ids=prompt.token_ids + self.engine.tokenize(text, add_special_tokens=False),
                       infill=infill)

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
