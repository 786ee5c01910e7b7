"""OpenAI\x27s /v1/embeddings."""
