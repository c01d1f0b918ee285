"""The core: tasks, the graph, the scheduler, tools, events. Pure: no I/O, no edge.

Nothing here imports a model client, a store, a backend, the agent or a shell; the core owns
the protocols it consumes (`backend.Backend`, `scheduler.Journal`, `shared.CallCache`) and
the edges implement them. Read it in this order: task, graph, events, tools, scheduler.
"""
