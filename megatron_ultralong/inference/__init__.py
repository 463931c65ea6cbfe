"""Long-context inference on Megatron checkpoints with context parallelism (docs/eval.md, "Megatron checkpoints").

- ``kv_cache``: this rank's shard of the KV cache (post-RoPE keys and values, a validity mask per slot)
- ``cached_attention``: the core-attention wrapper (prefill: record the shard; decode: local partial + LSE merge)
- ``engine``: sharded prefill, distributed greedy decode, chunked NLL; ``generate_fn`` / ``nll_fn`` for eval/
- ``loading``: the checks before any weight is read, the inference config, building and loading the model

Everything here raises ``InferenceError`` (or ConfigError / CheckpointError) on bad input, one line.
"""


class InferenceError(ValueError):
    """Bad inference input (a prompt, a layout); the message says what and how to fix it."""
