"""Long-context evaluation of an exported HF model: niah, ruler, perplexity, infinitebench (tasks and scoring),
hf (loading the model, greedy decoding), plots. Every task takes a ``generate`` / ``nll`` function.

Everything here raises ``EvalError`` on bad input; the tools (megatron_ultralong/cli/eval_*.py) print it as one
line and exit 2. This module stays free of torch.
"""


class EvalError(ValueError):
    """Bad evaluation input; the message says what and how to fix it."""
