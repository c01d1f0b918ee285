"""plait and the Model Context Protocol (needs plait[mcp]).

- `client`: MCP servers named in a client config file become plait tools (`--tools X.json`).
- `server`: plait as an MCP server (`plait mcp`), offering `run` and `execute`.
- `schematool`: a tool whose contract is a JSON Schema, as MCP tools have.
- `cli`: the `plait tools` and `plait mcp` commands.
"""
