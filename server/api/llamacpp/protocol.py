"""llama.cpp's /infill and /completion request (its response is a plain dict, see serving.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from ..protocol import INT64, MAX_N, JsonSchema, Stop, Text, _Infill, _Request, accepted


class LlamaCppRequest(_Request, _Infill):
    """llama.cpp's /infill and /completion (llama.vscode, llama.vim, Continue's llama.cpp provider)."""

    input_prefix: Text = ""
    input_suffix: Text = ""
    prompt: Text = ""
    n_predict: int = Field(-1, ge=-1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    stop: Stop = Field(default_factory=list)
    seed: Annotated[int, Field(**INT64)] | None = None
    stream: bool = False
    n_cmpl: int = Field(1, ge=1, le=MAX_N)
    n_indent: int = Field(0, ge=0, description="llama.cpp: lines indented less than this end the completion")
    id_slot: int = Field(-1, ge=-1)  # llama.cpp's slot; here it names the typist for supersession (-1: none)
    response_fields: list[str] | None = None
    model: str | None = Field(None, description="a served model's name picks its engine; any other is ignored, as "
                                                "llama.cpp's server (one model) ignores it")
    # llama.cpp's sampling parameters, passed to the engine (llama.cpp's names; its defaults where they differ)
    top_k: int = Field(40, ge=0, description="llama.cpp's default 40; 0: all tokens")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="llama.cpp's default 0.05")
    repeat_penalty: float = Field(1.0, gt=0.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    ignore_eos: bool = False
    grammar: str | None = Field(None, description="a GBNF grammar the output follows")
    json_schema: JsonSchema | None = Field(None, description="the output is JSON valid against this schema")
    t_max_predict_ms: int = Field(0, ge=0, description="after the first newline, stop once generating has taken "
                                                       "this long (llama.cpp's; 0: no limit)")
    # Parameters whose llama.cpp default is "off": accepted at that value, refused otherwise (not implemented)
    mirostat: int = 0
    typical_p: float = 1.0
    # What llama.cpp clients send that changes nothing here
    samplers: Any = accepted("the engine applies top-k, top-p and min-p in its own fixed order")
    cache_prompt: Any = accepted("the engine's prefix cache is always on")
    t_max_prompt_ms: Any = accepted("llama.cpp's server reads it but does not act on it either")
    n_keep: Any = accepted("prompts are never shifted out of the context here: too long is trimmed or a 400")

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> Any:
        return None if value in (None, -1, 4294967295) else value  # llama.cpp's "random" seeds

    @field_validator("mirostat", "typical_p")
    @classmethod
    def _off(cls, value: float, info: Any) -> float:
        off = cls.model_fields[info.field_name].default
        if value != off:
            raise ValueError(f"not implemented here: leave it at {off} (off)")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> LlamaCppRequest:
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give grammar or json_schema, not both")
        return self


