"""A hand-written stdio MCP server (no SDK) whose tools have names a plan cannot call as
they are (`x-y`, `évil`, `my tool`, `join`, `1st`) or no name at all; each call answers
`called NAME`, so a test sees which remote name plait used."""

from __future__ import annotations

import json
import sys

NAMES = ["x-y", "évil", "my tool", "join", "1st", "", "fine"]
SCHEMA = {"type": "object", "properties": {"v": {"type": "integer"}}}


def reply(msg_id: object, result: object) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        continue  # a notification
    if method == "initialize":
        version = msg["params"].get("protocolVersion", "2025-06-18")
        reply(
            msg_id,
            {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "odd", "version": "0"},
            },
        )
    elif method == "tools/list":
        reply(msg_id, {"tools": [{"name": n, "inputSchema": SCHEMA} for n in NAMES]})
    elif method == "tools/call":
        name = msg["params"]["name"]
        v = msg["params"].get("arguments", {}).get("v")
        reply(msg_id, {"content": [{"type": "text", "text": f"called {name} {v}"}]})
    else:
        reply(msg_id, {})
