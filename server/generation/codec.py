"""The served model's text side, as generation uses it: its tokenizer and its chat template (or the server's
CODESERVE_CHAT_TEMPLATE over it), with the template's refusals turned into the client's 400."""

from __future__ import annotations

from typing import Any

from ..engine.base import Engine
from ..engine.chat import ChatTemplateError
from ..errors import InvalidRequest


class Codec:
    def __init__(self, engine: Engine, model_id: str, chat_template: str | None = None):
        self.engine = engine
        self.model_id = model_id
        self.chat_template = chat_template

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.engine.tokenize(text, add_special_tokens=add_special_tokens)

    def single_token(self, text: str) -> int | None:
        """The id of `text` where the tokenizer has it as one token, else None."""
        ids = self.engine.tokenize(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def chat_text(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  variables: dict[str, Any] | None = None) -> str:
        try:
            return self.engine.chat_prompt(messages, self.chat_template, tools, variables)
        except ChatTemplateError as exc:
            if exc.missing:
                raise InvalidRequest(
                    f"model '{self.model_id}' has no chat template, so chat messages cannot be formatted for it: "
                    "send the text as a prompt to /v1/completions, or give the server one with "
                    "CODESERVE_CHAT_TEMPLATE (a Jinja file, as vLLM's --chat-template)", param="model") from exc
            raise InvalidRequest(f"the chat template of model '{self.model_id}' refused the messages: {exc}",
                                 param="messages") from exc

    def template_takes_tools(self) -> bool:
        return self.engine.template_takes_tools(self.chat_template)
