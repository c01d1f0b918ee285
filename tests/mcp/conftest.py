"""The MCP tests need plait[mcp] (and mcp-server-time, in the dev extra); without the SDK
they are not collected, as the README's test command always installs it."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("mcp") else ["test_*.py"]
