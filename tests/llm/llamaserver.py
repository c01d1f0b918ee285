"""Start and stop llama-cpp-python's OpenAI-compatible server on loopback (tests, benches).

    python -m llama_cpp.server --model <gguf> --model_alias smollm2 --host 127.0.0.1
        --port <free> --n_ctx 4096 --n_threads 2 --cache true --interrupt_requests false

`--cache true` is the prompt cache that gives program affinity on this server (see
plait/llm/openai.py); `--interrupt_requests false` stops it from cutting a streaming reply
short whenever another request arrives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TOOLS = str(ROOT / "examples" / "tools.py")
SERVER_FLAGS = ["--n_ctx", "4096", "--n_threads", "2", "--cache", "true",
                "--interrupt_requests", "false"]  # fmt: skip
READY_TIMEOUT = 120.0


def missing_server() -> str | None:
    """Why the server cannot start here (a package missing), or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama_cpp is not importable: pip install -e '.[local,server]'"
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return "llama_cpp's server extra is missing: pip install -e '.[local,server]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_path() -> Path:
    from plait.llm.local import default_model_path

    return default_model_path()


@contextlib.contextmanager
def llama_server(*extra: str, flags: list[str] | None = None) -> Iterator[tuple[str, Path]]:
    """Start `python -m llama_cpp.server` on a free port; yield (base URL, log path)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()),
           "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           *(SERVER_FLAGS if flags is None else flags), *extra]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/models", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.25)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
