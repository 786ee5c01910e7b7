"""The Engine protocol: what generation needs from an inference engine, and nothing more.

An engine raises server.errors' EngineUnavailable when its process is gone (nothing it was given will finish,
nothing new will run) and EngineFailure when it failed on one request; generation words both for the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .tool_parsing import ToolParserSession


class EngineStartError(RuntimeError):
    """The engine could not start (out of memory, missing weights, bad arguments)."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the output (vLLM's StructuredOutputsParams): exactly one of these is set."""

    json_schema: dict[str, Any] | None = None  # the output is JSON valid against this schema
    json_object: bool = False  # the output is a JSON object, any
    regex: str | None = None
    choice: tuple[str, ...] | None = None  # the output is one of these strings
    grammar: str | None = None  # an EBNF (GBNF-style) grammar the output follows
    param: str = ""  # the request field it came in, for the client's 400 when it cannot be compiled


@dataclass(frozen=True)
class SamplingSettings:
    """Engine-agnostic sampling parameters, already validated by the protocol layer. The defaults change nothing:
    a field away from its default is something the engine must honour (or refuse: Engine.unsupported)."""

    max_tokens: int = 16  # the request's limit until generation clamps it to what the context leaves
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    adapter: str | None = None  # the LoRA adapter (by its served name) that generates, or the base model
    # vLLM's extra sampling parameters (its SamplingParams' names and meanings)
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    allowed_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str, ...] = ()
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured: StructuredOutput | None = None

    def changed(self) -> list[str]:
        """The extra parameters set away from their defaults (what an engine may not implement)."""
        default = SamplingSettings()
        return [name for name in EXTRA_PARAMETERS if getattr(self, name) != getattr(default, name)]


EXTRA_PARAMETERS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "logit_bias",
                    "allowed_token_ids", "bad_words", "skip_special_tokens", "spaces_between_special_tokens",
                    "include_stop_str_in_output", "structured")


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """New output of one of the request's n sequences since its previous Delta."""

    index: int
    text: str
    token_count: int  # tokens this delta adds
    finish_reason: str | None  # "stop" | "length" | None while running
    logprobs: tuple[TokenLogprob, ...] = ()
    # A copy of another choice's tokens, made by the adapter rather than generated (greedy n > 1): usage
    # counts it, as OpenAI counts every returned choice; metrics of the engine's work do not.
    copied: bool = False
    # The stop string that ended the sequence (finish_reason "stop"; vLLM's CompletionOutput.stop_reason when a
    # string): None for EOS, a stop token, or while running. Anthropic's API answers with it (`stop_sequence`).
    stop_string: str | None = None


class Engine(Protocol):
    model_id: str
    max_model_len: int
    vocab_size: int  # token ids run from 0 to vocab_size - 1
    max_token_chars: int  # the longest text one token stands for: len(text) / this bounds the token count
    special_tokens: frozenset[str]  # the tokenizer's special tokens (template markers), as text

    def generate(self, prompt: str | list[int], sampling: SamplingSettings, request_id: str) -> AsyncIterator[Delta]:
        """Yield deltas until every sequence finished. Cancelling the iteration aborts the request."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids as the engine would make them (BOS included where the model adds one)."""
        ...

    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        """The model's chat template (or `template` over it) applied, ready for generation, with `tools` (OpenAI
        chat tools) and `variables` (what a request passes the template: `reasoning_effort`, vLLM's
        `chat_template_kwargs`) where given; ChatTemplateError (engine/chat.py) where the model has none or the
        template refuses the messages."""
        ...

    def template_takes_tools(self, template: str | None = None) -> bool:
        """Whether the chat template renders tools (else generation writes them into a generic prompt)."""
        ...

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolParserSession:
        """vLLM's tool parser `name` over this engine's tokenizer, for one answer (engine/tool_parsing.py)."""
        ...

    def num_unfinished_requests(self) -> int: ...

    def check(self, sampling: SamplingSettings) -> None:
        """Raise InvalidRequest (server.errors) naming the parameter this engine cannot honour, or whose value it
        refuses (a grammar it cannot compile): before the request runs, so the client hears a 400, never a
        failure mid-stream and never a parameter silently ignored."""
        ...

    def dead(self) -> str | None:
        """Why the engine can no longer serve (its process exited), or None while it can."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs, as the engine sees it: {"name", "args", "max_model_len"} (published on /v1/plan)."""
        ...

    async def shutdown(self) -> None: ...


@dataclass(frozen=True)
class PairTokens:
    """A query-document pair as a cross-encoder reads it: the tokenizer's pair encoding (text, text_pair), with the
    segment ids of the models that have them (BERT's token_type_ids: zeros for the query, ones for the document)."""

    token_ids: list[int]
    token_type_ids: list[int] | None = None


class Pooler(Engine, Protocol):
    """An engine of a retrieval role (roles.py `pooling`): a forward pass per input, nothing generated."""

    async def embed(self, inputs: list[list[int]], dimensions: int | None, request_id: str) -> list[list[float]]:
        """One vector per input (the model's pooling, L2-normalised where the model is), cut to `dimensions` first
        (Matryoshka; the caller checked the model has that width)."""
        ...

    def pair(self, query: str, document: str) -> PairTokens:
        """The pair as the cross-encoder reads it (its tokenizer's pair encoding)."""
        ...

    async def score(self, pairs: list[PairTokens], request_id: str) -> list[float]:
        """A relevance score per pair: the classifier's one logit through a sigmoid (vLLM's default activation for a
        one-label classifier, so scores lie in 0..1 on either engine)."""
        ...


def pools(engine: Engine) -> bool:
    return hasattr(engine, "embed") and hasattr(engine, "score")
