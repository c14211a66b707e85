from __future__ import annotations

import pytest

from tests.data.tiny_tokenizer import tiny_tokenizer


@pytest.fixture
def tok():
    return tiny_tokenizer()
