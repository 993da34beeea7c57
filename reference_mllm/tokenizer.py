"""The tiny models' tokenizer: word-level, made with the `tokenizers` library, with each family's special
tokens and a short but faithful chat template.

Every lower-case word of `words` (plus a fixed base vocabulary for the chat templates), every digit and
punctuation mark is one token; anything else is `<unk>`.

Qwen3.5 is the exception: transformers always rebuilds its tokenizer as its own byte-level BPE
(`Qwen3_5Tokenizer`, from the saved vocabulary and merges, whatever class the folder names), so its
tiny tokenizer is such a BPE, trained on the words (lower-case and capitalised, with and without a
leading space) until each is one token; any other text falls back to byte tokens.
"""
from __future__ import annotations

import string

UNK = "<unk>"

# words the chat templates and default system prompt use, always in the vocabulary
BASE_WORDS = ("system", "user", "assistant", "you", "are", "a", "helpful", "picture", "video")

# special tokens per family, in id order after the ordinary vocabulary (as in the real tokenizers,
# where they sit at the end of the vocabulary)
QWEN2_VL_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
LLAVA_OV_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# VILA1.5's LLM tokenizers (Llama 2 style for the 3B / 13B): BOS and EOS only; the image placeholder is no
# token at all (the authors' code splits the prompt at "<image>" and inserts the id -200 between the chunks)
VILA_SPECIAL = ("<s>", "</s>")

# Short but faithful versions of the real chat templates (Qwen/Qwen2-VL-7B-Instruct and
# llava-hf/llava-onevision-qwen2-7b-ov-hf), so that template tokens sit where the real models put them.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FAMILIES = {
    "qwen2_vl": dict(special=QWEN2_VL_SPECIAL, template=QWEN2_VL_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                     extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                            "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}),
    "llava_onevision": dict(special=LLAVA_OV_SPECIAL, template=LLAVA_OV_TEMPLATE, eos="<|im_end|>",
                            pad="<|endoftext|>", extra={"image_token": "<image>", "video_token": "<video>"}),
}
FAMILIES["qwen2_5_vl"] = FAMILIES["qwen2_vl"]
# VILA1.5 has no chat template in its tokenizer: the prompt comes from the authors' conversation templates
# (`predictor.adapters.vila`), and its Llama tokenizer adds BOS to every text it encodes
FAMILIES["vila"] = dict(special=VILA_SPECIAL, template=None, eos="</s>", pad="</s>", extra={}, bos="<s>")
# Qwen3-VL's template adds no default system prompt
FAMILIES["qwen3_vl"] = {**FAMILIES["qwen2_vl"], "template": QWEN2_VL_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "")}


FAMILIES["qwen3_5"] = {**FAMILIES["qwen3_vl"], "byte_level": True}


def _family(family: str) -> dict:
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; available: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def build_tokenizer(words: list[str], family: str = "qwen2_vl"):
    """Word-level (Qwen3.5: byte-level BPE) `PreTrainedTokenizerFast` with the family's special tokens and
    chat template.

    Vocabulary: `<unk>`, newline, digits, punctuation, then sorted lower-case `words` + BASE_WORDS,
    then the family's special tokens. Text is lower-cased; spaces separate words and are dropped.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    fam = _family(family)
    lexicon = sorted({w.lower() for text in list(words) + list(BASE_WORDS) for w in _word_pieces(text)})
    if fam.get("byte_level"):
        tok = _byte_level_bpe(lexicon)
        unk = None
    else:
        tok, unk = _word_level(lexicon), UNK
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fam["special"]])
    if fam.get("bos"):  # Llama tokenizers prepend BOS to every encoded text
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam['bos']} $A", pair=f"{fam['bos']} $A $B", special_tokens=[(fam["bos"], tok.token_to_id(fam["bos"]))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, eos_token=fam["eos"], pad_token=fam["pad"],
        **({"bos_token": fam["bos"]} if fam.get("bos") else {}),
        extra_special_tokens=dict(fam["extra"]),
        model_max_length=32768, padding_side="left", clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = fam["template"]
    return tokenizer


def _word_level(lexicon: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab: dict[str, int] = {}
    for tok in [UNK, "\n", *string.digits, *string.punctuation, *lexicon]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces go, newlines stay tokens
        pre_tokenizers.Split(Regex(r"\n|[a-z]+|[0-9]|[^\sa-z0-9]"), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, "a ," -> "a,"
    return tok


def _byte_level_bpe(lexicon: list[str]):
    """Byte-level BPE with Qwen3.5's own pre-tokenizer (its regex, then bytes) and decoder, trained on the
    lexicon until every word (lower-case or capitalised, alone or after a space) is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    forms = sorted({f for w in lexicon for f in (w, w.capitalize())})
    trainer = trainers.BpeTrainer(vocab_size=1_000_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([p + w for w in forms for p in ("", " ")], trainer)
    return tok


def _word_pieces(text: str) -> list[str]:
    """The pre-tokenizer's word pieces of `text` (lower-case letter runs), for building the lexicon."""
    import re

    return re.findall(r"[a-z]+", text.lower())
