"""The OpenAI-compatible `/v1` API: completions and models over the same engine."""
