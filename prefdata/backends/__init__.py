"""Transports shared by samplers and judges: one OpenAI-compatible chat client and one in-process vLLM engine.

`samplers/` and `judges/` are thin adapters over these: they build request bodies and read the answers, while
retries, rate limits, connection handling and engine start/stop live here once.
"""
