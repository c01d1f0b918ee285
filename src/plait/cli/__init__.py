"""The shells: `plait` on the command line (main), its live view, batch files, reports, and
plait as an MCP server. Flags in, one API call, output out."""

from .main import main

__all__ = ["main"]
