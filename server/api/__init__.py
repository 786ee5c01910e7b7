"""The HTTP layer: one Endpoint object per API (endpoint.py; OpenAI's completions, chat and Responses, Copilot's
engines route, llama.cpp's /infill and /completion, Anthropic's Messages), each with its protocol models beside it;
app.py lists them; errors, auth, limits, supersession and the response accounting around them."""
