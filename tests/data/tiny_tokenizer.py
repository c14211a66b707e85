"""An offline byte-level BPE tokenizer for tests (no hub): every string is encodable."""

from __future__ import annotations

from functools import lru_cache

CORPUS = [
    "### Instruction:\nWrite the word backwards, letter by letter.\n\n### Input:\napple\n\n### Response:\nelppa",
    "### Instruction:\nAdd the two numbers.\n\n### Input:\n12 + 30\n\n### Response:\n42",
    "the correct answer is answer3. The answer is 576.",
    "hello world, the cat sat on the mat",
]


@lru_cache(maxsize=None)
def _build(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return tok.to_str()


def tiny_tokenizer(add_bos: bool = True):
    """A fresh PreTrainedTokenizerFast (pad 0, bos 1, eos 2); BOS added like Llama's."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_build(add_bos)), pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
