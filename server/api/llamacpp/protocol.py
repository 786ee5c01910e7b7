"""llama.cpp's /infill and /completion request (its response is a plain dict, see serving.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from ..protocol import INT64, MAX_N, Stop, Text, _Infill, _Request


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

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> Any:
        return None if value in (None, -1, 4294967295) else value  # llama.cpp's "random" seeds


