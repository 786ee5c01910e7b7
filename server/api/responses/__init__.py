"""responses endpoint: protocol.py (the request, its items and tools), conversation.py (to the generation core's chat),
output.py (the response, its items and stream events), store.py (stored responses) and serving.py (the Endpoint)."""
