"""What the planner knows of a GGUF file (llama.cpp's model format): read by engine/gguf_file.py, pure data here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GgufFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="the .gguf file")
    architecture: str = Field(description="general.architecture (llama.cpp's name: llama, qwen2, starcoder2, ...)")
    weights_type: str = Field(description="general.file_type as llama.cpp names it (Q4_1, Q8_0, F16, ...)")
    tensor_bytes: int = Field(gt=0, description="the tensors' bytes as stored: what llama.cpp loads")
    context_length: int = Field(gt=0, description="{architecture}.context_length")
    bytes_as: dict[str, int] = Field(description="the tensors' bytes with the weight matrices converted to each type "
                                                 "engine/gguf_convert.py writes (Q8_0)")
