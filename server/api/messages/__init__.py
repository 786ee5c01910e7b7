"""messages endpoint (Anthropic's Messages API, as Claude Code speaks it): protocol.py (its request, response and
stream models, and Anthropic's error shape), convert.py (a request as the generation core's chat), serving.py (the
Endpoints: /v1/messages and /v1/messages/count_tokens)."""
