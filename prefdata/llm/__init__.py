"""The model layer. Sampling (`generate/`) and the LLM pairwise judge (`judges/`) both talk to one chat-model
interface (`chat.ChatModel`, opened by `chat.open_chat_model` from a picklable `chat.ModelSpec`), with one module
per engine: `vllm_model` (in-process vLLM), `openai_model` (any OpenAI-compatible server), `hf_model`
(transformers). Under them: the OpenAI-compatible client (`openai_client`, with its transport `http1`, the
chat-completions reply in `completion` and its in-flight counter in `flight`), the in-process vLLM engine's start and
stop (`vllm_engine`), the one endpoint config (`endpoint`), token counting against a context and `too_long`
(`context`), and the hardware decisions (`hardware`: dtype, threads, training's device and precision).
"""
