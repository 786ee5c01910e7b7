"""The Jina/Cohere rerank API (/v1/rerank, /rerank) as vLLM serves it."""
