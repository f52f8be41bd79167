"""The model layer: the transports shared by samplers and judges (one OpenAI-compatible chat client, one
in-process vLLM engine), token counting against a model's context and the too_long outcome (`context`), and the
hardware decisions (dtype, threads: `hardware`).

`samplers/` and `judges/` are thin adapters over these: they build request bodies and read the answers, while
retries, rate limits, connection handling and engine start/stop live here once.
"""
