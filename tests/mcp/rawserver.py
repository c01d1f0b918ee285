"""A hand-written stdio MCP server (no SDK) that answers `tools/call` with a malformed
result: `content` is not a list. What a buggy server in another language may send. With
`--bad-list`, its tools/list result is invalid too (an inputSchema that is not an object)."""

from __future__ import annotations

import json
import sys

TOOL = {"name": "broken", "description": "Answer badly.", "inputSchema": {"type": "object"}}


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
                "serverInfo": {"name": "raw", "version": "0"},
            },
        )
    elif method == "tools/list":
        bad = {**TOOL, "inputSchema": "not a schema"}
        reply(msg_id, {"tools": [bad if "--bad-list" in sys.argv else TOOL]})
    elif method == "tools/call":
        reply(msg_id, {"content": "not a list", "isError": "maybe"})
    else:
        reply(msg_id, {})
