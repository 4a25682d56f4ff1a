"""The token cache: the tokenizer's exact output, bounded, shared safely across threads."""

from __future__ import annotations

import pickle
import threading
import time

import open_clip
import torch

from streamer.learning import tokens
from streamer.learning.tokens import Tokens

TEXTS = ["a photo of a cat.", "a photo of a dog.", "", "ünïcödé \u00a0 spaces", "x " * 100]


def test_same_tensor_as_the_tokenizer_with_repeats_and_misses() -> None:
    plain = open_clip.get_tokenizer("streamer-tiny")
    cached = Tokens(plain, size=3)
    for texts in (TEXTS, TEXTS[::-1], [TEXTS[0]] * 4, TEXTS[1:3] + TEXTS[1:3], []):
        want, got = plain(list(texts)), cached(texts)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert len(cached) == 3  # bounded: the least recently used went


def test_each_distinct_text_is_tokenized_once_while_cached() -> None:
    plain = open_clip.get_tokenizer("streamer-tiny")
    seen: list[str] = []

    def counting(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return plain(texts)

    cached = Tokens(counting, size=2)
    cached(["a", "b", "a"])
    cached(["b", "a"])
    assert seen == ["a", "b"]
    cached(["c"])  # evicts "b" (least recently used), "a" was used last
    cached(["a"])
    assert seen == ["a", "b", "c"]
    cached(["b"])
    assert seen == ["a", "b", "c", "b"]


def test_threads_share_it_and_a_process_gets_its_own() -> None:
    plain = open_clip.get_tokenizer("streamer-tiny")
    cached = Tokens(plain, size=64)
    texts = [f"a photo of thing {i}." for i in range(100)]
    want = plain(texts)
    errors: list[str] = []

    def work(offset: int) -> None:
        for k in range(30):
            pick = [texts[(offset + k + j) % 100] for j in range(8)]
            if not torch.equal(cached(pick), plain(pick)):
                errors.append(str(pick))

    threads = [threading.Thread(target=work, args=(7 * i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cached) <= 64
    copy = pickle.loads(pickle.dumps(cached))
    assert len(copy) == 0 and torch.equal(copy(texts), want)


def test_the_word_cache_stays_bounded_and_keeps_special_tokens(monkeypatch) -> None:
    plain = open_clip.tokenizer.SimpleTokenizer()
    want = plain(["<start_of_text> a photo"])
    monkeypatch.setattr(tokens, "WORD_CACHE_LIMIT", 50)
    cached = Tokens(plain, size=4)
    cached([f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(200)])
    assert len(plain.cache) < 50  # past the limit: emptied after that call
    assert torch.equal(cached(["<start_of_text> a photo"]), want)


def test_the_word_cache_is_never_trimmed_under_a_running_call(monkeypatch) -> None:
    """open_clip's BPE asks `word in cache` then reads `cache[word]`: a trim between the two
    (another thread's call ending) would raise KeyError inside a tokenize call."""

    class TwoSteps:  # reads its cache as open_clip's BPE does, slowly
        def __init__(self) -> None:
            self.cache: dict[str, object] = {"<start_of_text>": "<start_of_text>"}

        def __call__(self, texts: list[str]) -> torch.Tensor:
            rows = []
            for text in texts:
                self.cache.setdefault(text, len(self.cache))
                time.sleep(0.001)  # another call may end meanwhile
                rows.append([hash(self.cache[text]) % 1000])
            return torch.tensor(rows).reshape(len(texts), 1)

    monkeypatch.setattr(tokens, "WORD_CACHE_LIMIT", 3)
    cached, errors = Tokens(TwoSteps(), size=4), []

    def work(k: int) -> None:
        try:
            for i in range(40):
                cached([f"w{k}-{i}"])
        except Exception as exc:  # a KeyError from a trimmed cache
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cached.tokenize.cache) <= 3 + 4  # trimmed whenever no call ran
