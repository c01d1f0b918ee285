"""`plait tools` (every tool a run may call, Python and MCP) and `plait mcp` (plait as an MCP
server). Registered on the main group in plait/cli/main.py; `plait mcp` needs plait[mcp]."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from ..core.tools import Tool, Tools
from ..errors import PlaitError
from ..runs.loading import load_tools
from ..runs.result import finite
from .terminal import terminal_text


def tools_option(f: Any) -> Any:
    """`--tools`, as every command that loads tools takes it (plait/cli/main.py uses this one)."""
    return click.option(
        "--tools",
        required=True,
        multiple=True,
        metavar="TOOLS",
        help="A .py file or importable module (its @plait.tool functions), or an MCP config "
        '(.json with "mcpServers"); give it several times to use them all.',
    )(f)


@click.command("tools")
@tools_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of the tools.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def tools_cmd(tools: tuple[str, ...], as_json: bool, debug: bool) -> int:
    """List every tool of TOOLS: its parameters, description, whether it is pure, and where
    it comes from (a Python module, or mcp:SERVER)."""
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the list's (or the JSON's)
        registry = load_tools(tools)
    described = [describe(t) for t in registry.values()]
    if as_json:  # strict JSON: a default of NaN or Infinity is null
        click.echo(json.dumps(finite(described), ensure_ascii=False, allow_nan=False))
        return 0
    for d in described:
        pure = "  [pure]" if d["pure"] else ""
        click.echo(terminal_text(f"{d['signature']}{pure}  ({d['source']})"))
        if d["description"]:
            click.echo(terminal_text(f"    {d['description'].splitlines()[0]}"))
        if d["note"]:
            click.echo(terminal_text(f"    note: {d['note']}"))
    return 0


def describe(t: Tool) -> dict[str, Any]:
    """One tool as `plait tools --json` shows it."""
    source = getattr(t, "source", "") or _python_source(t)
    return {
        "name": t.name,
        "signature": t.signature(),
        "description": t.description,
        "parameters": t.schema(),
        "pure": t.pure,
        "source": source,
        "note": getattr(t, "note", ""),
    }


def _python_source(t: Tool) -> str:
    """`python:MODULE`, or `python:FILE` for a tools file loaded by path."""
    module = getattr(t.fn, "__module__", None) or "?"
    code = getattr(t.fn, "__code__", None)
    if module.startswith("plait_tools_") and code is not None:
        return f"python:{code.co_filename}"
    return f"python:{module}"


@click.command("mcp")
@tools_option
@click.option(
    "--model",
    default="local",
    show_default=True,
    metavar="SPEC",
    help="The model of `run`: local[:FILE.gguf], openai:MODEL, ollama:MODEL, replay:FILE.",
)
@click.option("--base-url", default=None, help="Server URL for openai: models.")
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Run store [default: $PLAIT_STORE, else runs.db in the user data directory].",
)
@click.option(
    "--http",
    "http_port",
    default=None,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def mcp_cmd(
    tools: tuple[str, ...],
    model: str,
    base_url: str | None,
    store_url: str | None,
    http_port: int | None,
    debug: bool,
) -> int:
    """Serve plait over MCP (stdio, or --http PORT): tools `run` (a question) and `execute`
    (a written plan), each returning the run as JSON, with progress as tasks finish."""
    from ..stores import default_store_url

    try:
        from .mcpserver import build, serve
    except ImportError as e:
        raise PlaitError(f"plait mcp needs plait[mcp]: pip install 'plait[mcp]' ({e})") from None
    # Over stdio, stdout is the protocol's: what a tools module prints as it loads is not.
    with contextlib.redirect_stdout(sys.stderr):
        registry: Tools = load_tools(tools)
    server = build(registry, model=model, base_url=base_url, store=store_url or default_store_url())
    asyncio.run(serve(server, http_port))
    return 0
