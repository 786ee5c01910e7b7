"""llamacpp endpoint: protocol.py (its request and response models) and serving.py (the Endpoint)."""
