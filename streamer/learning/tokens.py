"""Texts to token rows, each distinct text tokenized once while it is among the recent ones.

open_clip's tokenizers are Python (ftfy, a regex, BPE): ~0.1 ms a text. Class prompts come
back every update, a replayed caption every time it is drawn, and the decode workers already
tokenized each record's text to refuse one the tokenizer cannot take: with one cache shared
by the workers and the training thread, the training thread tokenizes almost nothing (on a
GPU node its time is what keeps the GPU fed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

Tokenize = Callable[[list[str]], torch.Tensor]  # texts [T] -> tokens [T, L]

WORD_CACHE_LIMIT = 200_000  # open_clip's BPE word cache grows with every new word, unbounded


class Tokens:
    """`tokenize` with a bounded LRU cache of rows by text; the same tensor as `tokenize`
    would return (its dtype and context length). Safe from any thread; pickles (a decode
    process gets its own, empty)."""

    def __init__(self, tokenize: Tokenize, size: int = 8192) -> None:
        self.tokenize, self.size = tokenize, size
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._busy = 0  # tokenize calls running (open_clip's BPE reads its cache in two steps)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            return self.tokenize([])
        distinct = dict.fromkeys(texts)
        with self._lock:
            rows = {t: r for t in distinct if (r := self._rows.get(t)) is not None}
            for t in rows:
                self._rows.move_to_end(t)
            missing = [t for t in distinct if t not in rows]
            if missing:
                self._busy += 1
        if missing:  # outside the lock: workers tokenize side by side
            made: dict[str, torch.Tensor] = {}
            try:
                fresh = self.tokenize(missing)
                made = {t: fresh[i].clone() for i, t in enumerate(missing)}  # not views
            finally:
                with self._lock:
                    self._rows.update(made)
                    while len(self._rows) > self.size:
                        self._rows.popitem(last=False)
                    self._busy -= 1
                    if self._busy == 0:  # no call reads the word cache while it is trimmed
                        _bound_word_cache(self.tokenize)
            rows |= made
        return torch.stack([rows[t] for t in texts])

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenize": self.tokenize, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tokenize"], state["size"])  # type: ignore[misc]


def _bound_word_cache(tokenize: Tokenize) -> None:
    """Empty open_clip's BPE word cache past WORD_CACHE_LIMIT, keeping its special tokens
    (cached as themselves; every other word maps to its BPE, which differs): a daemon reading
    captions for months would otherwise keep every word it ever saw."""
    cache = getattr(tokenize, "cache", None)
    if isinstance(cache, dict) and len(cache) > WORD_CACHE_LIMIT:
        tokenize.cache = {k: v for k, v in cache.items() if k == v}  # type: ignore[attr-defined]
