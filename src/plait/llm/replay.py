"""`replay:FILE?ttft=S&tps=N`: replies from a JSON file, with real LLM timing.

The MockTransport of LLMs. Replies are returned in call order, each streamed in ~4-character
tokens at N tokens/s after S seconds, so tests and benchmarks reproduce a real model's timing
deterministically. Running out of replies is an error, not a silent empty answer.

The file holds a list of replies, or, for many runs at once (a batch), an object mapping a
key to its own list: a call takes the next reply of the longest key found in its last user
message, else in any earlier user message (the question is in the first), so concurrent runs
each get their own. A call that matches no key is an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import PlaitError
from .base import Delta, LLMError, Request, Usage

CHARS_PER_TOKEN = 4
_PROBE = 6  # characters of a key that index it


class ReplayLLM:
    supports_json_schema = False

    def __init__(
        self,
        replies: Sequence[str] | Mapping[str, Sequence[str]],
        *,
        ttft: float = 0.0,
        tps: float = 0.0,
        name: str = "replay",
    ) -> None:
        self.replies: list[str] | dict[str, list[str]]
        if isinstance(replies, Mapping):
            self.replies = {k: list(v) for k, v in replies.items()}
            self._next: dict[str, int] = dict.fromkeys(self.replies, 0)
            # Keys by their first few characters, so finding the keys in a prompt costs one
            # lookup per position of the prompt, not one scan per key (a batch has 100k).
            self._index: dict[str, list[str]] = {}
            self._short: list[str] = []
            for key in self.replies:
                if len(key) < _PROBE:
                    self._short.append(key)
                else:
                    self._index.setdefault(key[:_PROBE], []).append(key)
        else:
            self.replies = list(replies)
        self.ttft = ttft
        self.tps = tps
        self.name = name
        # Requests, kept for tests in the list form only: a keyed file serves batches of
        # 100k runs, and keeping each request would keep each run's whole prompt.
        self.calls: list[Request] = []
        self.count = 0

    @classmethod
    def from_spec(cls, spec: str) -> ReplayLLM:
        """`FILE?ttft=0.5&tps=40` (the part after `replay:`)."""
        path, _, query = spec.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = set(params) - {"ttft", "tps"}
        if unknown:
            raise PlaitError(f"replay model: unknown option {sorted(unknown)[0]!r} (use ttft, tps)")
        try:
            ttft = float(params.get("ttft", 0))
            tps = float(params.get("tps", 0))
        except ValueError:
            raise PlaitError(f"replay model: ttft and tps must be numbers in {spec!r}") from None
        try:
            replies = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PlaitError(f"replay model: file not found: {path}") from None
        except (OSError, ValueError) as e:
            raise PlaitError(f"replay model: cannot read {path}: {e}") from None
        if not _replies(replies):
            raise PlaitError(
                f"replay model: {path} must hold a JSON list of strings, or an object "
                "mapping keys to lists of strings"
            )
        return cls(replies, ttft=ttft, tps=tps, name=f"replay:{Path(path).name}")

    def _take(self, request: Request) -> str:
        self.count += 1
        if isinstance(self.replies, list):
            index = len(self.calls)
            self.calls.append(request)  # tests read what each call asked
            if index >= len(self.replies):
                raise LLMError(f"replay model: no reply left for call {index + 1}")
            return self.replies[index]
        users = [m["content"] for m in request.messages if m.get("role") == "user"]
        for text in reversed(users):
            key = self._find(text)
            if key is not None:
                n = self._next[key]
                if n >= len(self.replies[key]):
                    raise LLMError(f"replay model: no reply left for {key!r} (call {n + 1})")
                self._next[key] = n + 1
                return self.replies[key][n]
        last = " ".join((users[-1] if users else "").split())[:80]
        raise LLMError(f"replay model: no key of the replay file matches the prompt {last!r}")

    def _find(self, text: str) -> str | None:
        """The longest key that occurs in `text` ("Paris, France" wins over "Paris")."""
        found = [k for k in self._short if k in text]
        index = self._index
        for i in range(len(text) - _PROBE + 1):
            keys = index.get(text[i : i + _PROBE])
            if keys:
                found += [k for k in keys if text.startswith(k, i)]
        return max(found, key=len, default=None)

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        reply = self._take(request)
        for stop in request.stop:  # a real server stops at a stop sequence, and so do we
            cut = reply.find(stop)
            if cut >= 0:
                reply = reply[:cut]
        tokens = [reply[i : i + CHARS_PER_TOKEN] for i in range(0, len(reply), CHARS_PER_TOKEN)]
        start = time.perf_counter()
        if self.ttft > 0:
            await asyncio.sleep(self.ttft)
        for i, token in enumerate(tokens):
            if self.tps > 0 and i > 0:
                # Pace against the clock, not per sleep, so timing does not drift with load.
                delay = start + self.ttft + i / self.tps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield Delta(token)
        prompt = sum(len(m["content"]) for m in request.messages) // CHARS_PER_TOKEN
        yield Delta("", Usage(prompt, len(tokens)))


def _replies(value: object) -> bool:
    def strings(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(r, str) for r in v)

    if isinstance(value, dict):
        return all(isinstance(k, str) and k and strings(v) for k, v in value.items())
    return strings(value)
