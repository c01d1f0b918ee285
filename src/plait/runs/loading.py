"""Tools from where a user keeps them: a `.py` file, an importable module, an MCP config.

This is the one place a tools spec becomes a `Tools` registry, so the core never imports a
user's file or an MCP client: `as_tools` accepts whatever the API's `tools=` takes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core.tools import Tool, Tools
from ..errors import ToolError


def as_tools(tools: Any) -> Tools:
    """Accept a Tools, a {name: tool} mapping, a module / .py path / MCP config to load,
    or a list mixing tools, functions, Tools and such paths."""
    if isinstance(tools, Tools):
        return tools
    if isinstance(tools, str):
        return load_tools(tools)
    if isinstance(tools, Mapping):
        return Tools(
            v.renamed(k) if isinstance(v, Tool) else Tool(v, name=k) for k, v in tools.items()
        )
    return _merged([t if isinstance(t, Tools | str) else Tools([t]) for t in tools])


def _merged(parts: Iterable[Tools | str]) -> Tools:
    """One registry of several: paths loaded, examples joined; a name twice is an error."""
    loaded = [load_tools(p) if isinstance(p, str) else p for p in parts]
    if len(loaded) == 1:
        return loaded[0]
    examples = "\n\n".join(t.examples for t in loaded if t.examples)
    return Tools((t for part in loaded for t in part.values()), examples=examples or None)


def load_tools(spec: str | Iterable[str]) -> Tools:
    """Every `@tool` in a `.py` file or an importable module, under its function name; the
    tools of every server in an MCP config file (`.json` with "mcpServers"); or, given
    several such specs, all of their tools together."""
    if not isinstance(spec, str):
        return _merged(list(spec))
    if spec.endswith(".json"):
        from ..mcp.client import load_config_tools  # needs plait[mcp]; imported when used

        return load_config_tools(spec)
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise ToolError(f"tools file not found: {spec}")
            name = f"plait_tools_{abs(hash(str(path.resolve())))}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ToolError(f"cannot load tools file {spec}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except ToolError:
        raise
    except SyntaxError as e:
        raise ToolError(f"{e.filename or spec}:{e.lineno}: syntax error: {e.msg}") from None
    except ModuleNotFoundError as e:
        if e.name and spec.startswith(e.name):
            raise ToolError(f"tools module not found: {spec}") from None
        raise ToolError(f"{spec}: import failed: {e}") from None
    except KeyboardInterrupt:  # Ctrl-C during a slow import: the user's, not the module's
        raise
    except SystemExit as e:  # sys.exit() in a tools file must not end plait, silently or not
        raise ToolError(f"{spec}: import failed: the module called sys.exit({e.code!r})") from None
    except BaseException as e:  # the user's module raised while importing, whatever the type
        raise ToolError(f"{spec}: import failed: {type(e).__name__}: {e}") from None
    found = [v for v in vars(module).values() if isinstance(v, Tool)]
    if not found:
        raise ToolError(f"{spec}: no @plait.tool functions found")
    examples = getattr(module, "EXAMPLES", None)
    return Tools(found, examples=examples if isinstance(examples, str) else None)
