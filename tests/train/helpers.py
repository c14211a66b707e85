"""Small offline pieces for the training tests: a byte-level tokenizer and a matching tiny Llama."""

from __future__ import annotations

from functools import lru_cache

from asymlora.data import make_demo_tasks
from asymlora.models import tiny_llama

VOCAB = 320


@lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    train, _ = make_demo_tasks(4, 0, seed=123)
    corpus = [f"### Instruction:\n{ex.instruction}\n\n### Input:\n{ex.input}\n\n### Response:\n{ex.output}"
              for ex in train]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()


def tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                   pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def model(seed: int = 0):
    return tiny_llama(hidden=32, layers=2, vocab=VOCAB, heads=4, kv_heads=2, intermediate=64, seed=seed)


def tasks(n_train: int = 6, n_test: int = 3, names=("reverse", "add", "uppercase"), seed: int = 0):
    return make_demo_tasks(n_train, n_test, seed=seed, tasks=list(names))
