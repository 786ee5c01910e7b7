"""A fill-in-the-middle request (`Hole`) written as the served family's prompt: its FIM template, other files in
the family's repository format, or, for a model without FIM tokens, the prefix to continue or a chat request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .templates import REPO_FORMATS, FimTemplate, RepoFormat, hole_messages, plain_context


class Codec(Protocol):
    """The served model's text side: its tokenizer and its chat template (generation/codec.py)."""

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def chat_text(self, messages: list[dict[str, Any]]) -> str: ...

@dataclass(frozen=True)
class ExtraFile:
    filename: str
    text: str


def extra_files(pairs: tuple[tuple[str, str], ...]) -> tuple[ExtraFile, ...]:
    return tuple(ExtraFile(name, text) for name, text in pairs)


@dataclass(frozen=True)
class Hole:
    """A fill-in-the-middle request as the wire layers hand it over."""

    prefix: str
    suffix: str = ""
    extra: tuple[ExtraFile, ...] = ()
    filename: str = ""  # the edited file's path, where the family's repository format has a place for it
    repo_name: str | None = None
    code_stops: bool = False
    min_indent: int | None = None  # llama.cpp's n_indent
    fit: bool = False  # trim to fit the context instead of refusing
    reserve_tokens: int | None = None  # what the completion needs (its max_tokens) when trimming
    prefix_field: str = "prompt"  # the request field the prefix came in, for error messages
    typed: str = ""  # llama.cpp's `prompt` on /infill: text typed at the cursor, written after the middle marker


@dataclass(frozen=True)
class HoleFormat:
    """How this server writes a hole for the served model: its FIM template and its repository format when
    the tokenizer has that format's tokens. A model without FIM tokens either continues the prefix (the
    suffix then only tells the cleaner where to cut) or is asked through its chat template (`chat_prompt`).
    Continuing is the default: on the bundled SmolLM2-135M-Instruct, `codeserve eval` (40 holes, seed 0)
    scored exact match 0.125 and edit similarity 0.384 by continuing, 0.0 and 0.154 by chat."""

    fim: FimTemplate | None
    repo: RepoFormat | None = None
    codec: Codec | None = None  # None: text only (the quality gate renders prompts without a model)
    chat: bool = False  # a model without FIM tokens asked through its chat template

    @classmethod
    def for_model(cls, fim: FimTemplate | None, codec: Codec, chat: bool) -> HoleFormat:
        """The served model's format: the repository format only where its markers are single tokens of the
        served tokenizer (StarCoder v1 shares StarCoder2's FIM tokens but not its <file_sep>)."""
        repo = REPO_FORMATS.get(fim.id) if fim else None
        if repo and not all(len(codec.tokenize(m, add_special_tokens=False)) == 1 for m in repo.markers):
            repo = None
        return cls(fim, repo, codec, chat=fim is None and chat)

    def text(self, hole: Hole) -> str:
        files = [(f.filename, f.text) for f in hole.extra if f.text]
        if self.fim is None:
            if not self.chat:
                return plain_context(files) + hole.prefix
            assert self.codec is not None, "a chat hole needs the model's chat template"
            return self.codec.chat_text(hole_messages(plain_context(files) + hole.prefix, hole.suffix))
        if self.repo is None or not (files or hole.filename):  # the file alone: the file-level format
            return self.fim.prompt(plain_context(files) + hole.prefix, hole.suffix)
        prefix = f"{hole.filename}\n{hole.prefix}" if self.repo.path_in_prefix and hole.filename else hole.prefix
        return self.repo.render(files, hole.filename, hole.repo_name) + self.fim.prompt(prefix, hole.suffix)

    def token_ids(self, hole: Hole) -> list[int]:
        # FIM prompts and continued prefixes take the tokenizer's BOS where the model has one; a chat template
        # writes its own.
        assert self.codec is not None, "token ids need the served tokenizer"
        return self.codec.tokenize(self.text(hole), add_special_tokens=not self.chat)

    @property
    def markers(self) -> tuple[str, ...]:
        """Every template token of this format: none of them belongs in the middle."""
        if self.fim is None:
            return ()
        return (*self.fim.markers, *self.fim.stop, *(self.repo.markers if self.repo else ()))
