"""The HTTP layer: OpenAI wire format, IDE-compatible routes, errors, auth."""
