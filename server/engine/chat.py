"""Chat messages through a model's chat template, as every engine formats them (Transformers' apply_chat_template).

A model that cannot format the messages is the client's problem to hear about, not an engine failure: it has no
template (a base model, a fine-tune saved without one), or its template refused them (`raise_exception`, e.g.
"roles must alternate"). A template that is itself broken (syntax, an undefined name) stays a server error.
"""

from __future__ import annotations

import re
from typing import Any

from .tool_parsing import ToolParserSession


class ChatTemplateError(ValueError):
    """The messages cannot be formatted for this model; `missing`: it has no chat template at all."""

    def __init__(self, message: str, missing: bool):
        super().__init__(message)
        self.missing = missing


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], template: str | None = None,
                tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
    """`messages` as the prompt text, through `template` when given (vLLM's --chat-template), else the model's;
    `tools` (OpenAI chat tools) go to the template as Transformers passes them (`tools=`)."""
    from jinja2.exceptions import TemplateError

    if template is None and not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the model has no chat template", missing=True)
    try:
        return str(tokenizer.apply_chat_template(messages, chat_template=template, tools=tools or None,
                                                 tokenize=False, add_generation_prompt=True, **(variables or {})))
    except TemplateError as exc:
        if type(exc) is not TemplateError:  # TemplateSyntaxError, UndefinedError: the template is broken
            raise
        raise ChatTemplateError(str(exc), missing=False) from exc


def template_takes_tools(tokenizer: Any, template: str | None = None) -> bool:
    """Whether the chat template (the given one, else the model's) renders a `tools` list: templates written for
    tool calling read the variable (Qwen2.5's, Llama 3.1's, Hermes'); others would drop the tools silently."""
    source = template if template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # a tokenizer with several named templates
        source = source.get("tool_use") or source.get("default")
    return isinstance(source, str) and re.search(r"\btools\b", source) is not None


class TokenizerChat:
    """The Engine protocol's chat and tool methods for an engine that holds a Transformers tokenizer (`_tokenizer`):
    vLLM's and the Transformers engine alike."""

    _tokenizer: Any

    def chat_prompt(self, messages: list[dict[str, Any]], template: str | None = None,
                    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None) -> str:
        return render_chat(self._tokenizer, messages, template, tools, variables)

    def template_takes_tools(self, template: str | None = None) -> bool:
        return template_takes_tools(self._tokenizer, template)

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolParserSession:
        return ToolParserSession(name, self._tokenizer, tools)
