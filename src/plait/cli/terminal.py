"""Text made safe to print on a terminal: what tools, models and stores say is data.

A tool's result, a model's reply, an MCP server's description can hold terminal escapes
(ESC sequences that move the cursor, retitle the window, rewrite what was printed, or
worse): printed as they are, they would act on the user's terminal. Every view that puts
such text on a terminal (the live view, `plait show`, `plait runs`, `plait tools`) passes
it through `terminal_text` first.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, and C1 controls (\x9b is a one-byte CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def terminal_text(text: str, *, newlines: bool = False) -> str:
    """`text` with every control character shown as its escape (`\\x1b`), so none acts on
    the terminal; a tab is a space, and a newline a space too unless `newlines`."""
    text = text.replace("\t", " ")
    if newlines:
        return _CONTROL.sub(lambda m: "\n" if m.group() == "\n" else _shown(m.group()), text)
    return _CONTROL.sub(lambda m: " " if m.group() == "\n" else _shown(m.group()), text)


def _shown(c: str) -> str:
    return f"\\x{ord(c):02x}"
