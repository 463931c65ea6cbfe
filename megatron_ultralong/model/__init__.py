"""The Megatron-Core GPT model of a recipe: layer specs (TE | SDPA | local), builder, YaRN rotary, attention, loss.

    from megatron_ultralong.model.builder import build_model
"""
