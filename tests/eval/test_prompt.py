"""Prompt format of the eval tasks (eval/prompt.py): pieces without special tokens, one BOS (--bos), the optional
chat template (--chat-template), against a tokenizer that adds BOS on encode as Meta's Llama-3.1 files do."""
import random

import pytest

from megatron_ultralong.eval import EvalError, infinitebench, niah, ruler
from megatron_ultralong.eval.prompt import PromptFormat, adds_bos, prompt_frame
from tests.eval.helpers import BOS, TOK, llama3_tokenizer_file, llama31_tokenizer, special_ids

CHAT_SPECIALS = [BOS, 128006, 128007, 128009, 128006, 128007, 128009, 128006, 128007]
"""<|begin_of_text|>, then start/end header and end of turn of the system, user and (opened) assistant turns."""


@pytest.fixture(scope="module")
def meta():
    return llama31_tokenizer()


@pytest.fixture(scope="module")
def plain():
    """The packaged tokenizer as it is: no post-processor (encode adds nothing), BOS token known."""
    import transformers

    return transformers.PreTrainedTokenizerFast(tokenizer_file=llama3_tokenizer_file(), bos_token="<|begin_of_text|>")


def test_the_fixture_adds_bos_on_encode_like_metas_tokenizer(meta, plain):
    assert meta.encode("The grass is green.")[0] == BOS and adds_bos(meta)
    assert plain.encode("The grass is green.")[0] != BOS and not adds_bos(plain)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_a_niah_prompt_holds_exactly_one_bos_first_and_no_other_special_token(meta, depth):
    s = niah.build_sample(meta, 2048, depth, "12345")  # today's code: 80 BOS, one per filler sentence
    assert len(s.prompt_ids) == 2048 and special_ids(meta, s.prompt_ids) == [BOS] and s.prompt_ids[0] == BOS
    assert meta.decode(s.prompt_ids[s.needle_token_pos:]).startswith("The pass key is 12345.")
    grid = niah.run_grid(lambda ids: " 1", meta, [1024], [0.5], log=None)
    assert (grid["bos"], grid["bos_token_id"], grid["chat_template"], grid["seed"]) == ("auto", BOS, False, 0)


@pytest.mark.parametrize("task", list(ruler.TASKS))
def test_a_ruler_prompt_holds_exactly_one_bos_first_and_no_other_special_token(meta, task):
    s = ruler.build_sample(task, meta, 4096, random.Random(0))
    assert len(s.prompt_ids) == 4096 and special_ids(meta, s.prompt_ids) == [BOS] and s.prompt_ids[0] == BOS
    seen = []
    res = ruler.run_ruler(lambda ids, n: seen.append(ids) or " 1", meta, [task], [1500], samples_per_cell=2,
                          seed=4, log=None)
    assert [special_ids(meta, ids) for ids in seen] == [[BOS], [BOS]]
    assert (res["bos"], res["bos_token_id"], res["chat_template"], res["seed"]) == ("auto", BOS, False, 4)


def test_an_infinitebench_prompt_holds_one_bos_plain_and_the_templates_own_tokens_as_a_chat(meta):
    text = infinitebench.build_sample("passkey", {"context": "The grass is green. " * 50 + "The pass key is 123.",
                                                  "input": "What is the pass key?", "answer": ["123"]}, "x:1").prompt
    assert special_ids(meta, infinitebench.prompt_ids(meta, text, chat=False)) == [BOS]
    chat = infinitebench.prompt_ids(meta, text, chat=True)
    assert special_ids(meta, chat) == CHAT_SPECIALS and chat[0] == BOS
    assert special_ids(meta, infinitebench.prompt_ids(meta, text, chat=True, bos="never")) == CHAT_SPECIALS[1:]
    assert special_ids(meta, infinitebench.prompt_ids(meta, text, chat=False, bos="never")) == []
    seen = []
    res = infinitebench.run_infinitebench(lambda ids, n: seen.append(ids) or "1", meta,
                                          {"passkey": [infinitebench.Sample(0, text, "123")]}, 10 ** 6, chat=False,
                                          log=None)
    assert [special_ids(meta, ids) for ids in seen] == [[BOS]] and res["bos"] == "auto"


def test_bos_modes_follow_the_tokenizer_or_the_flag(meta, plain):
    def bos_count(tok, mode):
        ids = niah.build_sample(tok, 1024, 0.5, "12345", frame=prompt_frame(tok, PromptFormat(bos=mode))).prompt_ids
        assert len(ids) == 1024
        return ids.count(BOS)

    assert [bos_count(meta, m) for m in ("auto", "always", "never")] == [1, 1, 0]
    assert [bos_count(plain, m) for m in ("auto", "always", "never")] == [0, 1, 0]  # auto: this model never saw one
    assert niah.build_sample(TOK, 600, 0.5, "12345").prompt_ids == niah.build_sample(TOK, 600, 0.5, "12345",
                                                                                       frame=prompt_frame(TOK)).prompt_ids
    with pytest.raises(EvalError, match="--bos always: the tokenizer has no BOS token"):
        prompt_frame(TOK, PromptFormat(bos="always"))
    with pytest.raises(EvalError, match="--bos 'sometimes': choose from auto, always, never"):
        prompt_frame(meta, PromptFormat(bos="sometimes"))


def test_the_chat_template_wraps_the_prompt_and_the_answer_prefix_opens_the_assistant_turn(meta, plain):
    chat = PromptFormat(chat_template=True)
    s = niah.build_sample(meta, 2048, 0.5, "12345", frame=prompt_frame(meta, chat))
    assert len(s.prompt_ids) == 2048 and special_ids(meta, s.prompt_ids) == CHAT_SPECIALS
    text = meta.decode(s.prompt_ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert text.endswith("What is the pass key?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                         "The pass key is")
    assert meta.decode(s.prompt_ids[s.needle_token_pos:]).startswith("The pass key is 12345.")
    for task in ruler.TASKS:
        r = ruler.build_sample(task, meta, 3000, random.Random(1), frame=prompt_frame(meta, chat))
        assert len(r.prompt_ids) == 3000 and special_ids(meta, r.prompt_ids) == CHAT_SPECIALS
        assert meta.decode(r.prompt_ids).split("<|start_header_id|>assistant<|end_header_id|>\n\n")[1].startswith(
            "Answer: According" if task == "variable_tracking" else "The special magic numbers for")
    # the template's BOS counts: --bos never takes it out, never two
    never = niah.build_sample(meta, 1024, 0.5, "1", frame=prompt_frame(meta, PromptFormat("never", True)))
    assert special_ids(meta, never.prompt_ids) == CHAT_SPECIALS[1:]
    with pytest.raises(EvalError, match="--chat-template: the tokenizer has no chat template"):
        prompt_frame(plain, chat)
