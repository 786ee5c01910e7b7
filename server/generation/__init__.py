"""Between the wire format and the engine: prompts (FIM, chat), sampling, streaming, usage."""
