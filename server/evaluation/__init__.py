"""Fill-in-the-middle quality: seeded holes cut from real code, their scores, and a client that measures any
OpenAI-compatible server with `suffix` (`codeserve eval`) or completions made elsewhere (the 4-bit gate)."""
