"""A word-level tokenizer for the toy task, built with `tokenizers` and wrapped as a normal
`PreTrainedTokenizerFast` with a chat template, so it saves and loads like any hub tokenizer.

The template renders each message as `<|role|> content <|end|>`; the generation prompt is
`<|assistant|>`, so the prompt rendered with the generation prompt is an exact prefix of the
prompt plus completion (what TRL's DPO tokenization relies on).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prefcurate.toyworld.task import vocabulary

PAD, UNK, BOS, END = "<pad>", "<unk>", "<bos>", "<|end|>"
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL = [PAD, UNK, BOS, END, *ROLES]

# The `{% generation %}` markers let TRL train on assistant tokens only (content and the
# closing <|end|>, so the model learns to stop); they do not change the rendered text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' }}{% generation %}{{ message['content'] + ' <|end|> ' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|> ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy world's tokenizer: specials, then the task vocabulary, one id per word."""
    vocab = {token: i for i, token in enumerate(SPECIAL + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=END,
        additional_special_tokens=ROLES,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer
