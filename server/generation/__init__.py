"""Between the endpoints and the engine, with no HTTP: a request's sources (text, token ids, a fill-in-the-middle
hole, a chat with tools) prepared as prompts with their budget and checked sampling (core.py), run as prompts x n
choices with the engine request aborted however the caller leaves; tool calling (tools.py, tool_prompt.py,
tool_reader.py)."""
