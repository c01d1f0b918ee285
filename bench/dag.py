"""Makespan ÷ critical path on DAGs of async sleep tools: plait against LangGraph.

Four shapes, every sleep seeded in 10-200 ms:

  diamond   skewed diamond: a source, a fast and a slow branch joined by a sink, plus a task
            downstream of the fast branch alone (superstep engines hold it behind the slow one)
  fanout    one source, 200 parallel tasks, one fan-in sink
  layered   a random layered DAG of ~300 tasks, each with 1-3 parents in earlier layers
  braided   two chains of 20 that cross-reference each other every 3rd step

Critical path = the longest path through the DAG, weighting each node by its sleep. That is
the best any scheduler can do, so makespan ÷ critical path ≥ 1 and 1.00 is perfect.

plait runs the DAG as a written plan through `plait.aexecute` (parsing included in the
time). LangGraph runs the same DAG as a StateGraph: one async node per task that sleeps the
same amount, a single-parent node gets `add_edge(parent, node)`, a node with several
parents LangGraph's normal fan-in `add_edge([parents...], node)`; only `recursion_limit` is
raised so deep graphs are allowed. LangGraph's graph is compiled outside the timed region.
Each measurement is repeated (--repeat, default 3) and the median reported.

    python bench/dag.py [--repeat 3] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import random
import statistics
import time
from typing import Annotated, TypedDict

import plait

Dag = dict[int, tuple[int, list[int]]]  # task id -> (sleep ms, parent ids); ids topological


@plait.tool
async def sleep_ms(ms: int, after: list | None = None) -> int:
    """Sleep `ms` milliseconds; `after` only carries the dependencies."""
    await asyncio.sleep(ms / 1000)
    return ms


# -- shapes ------------------------------------------------------------------------------


def diamond(rng: random.Random) -> Dag:
    return {
        1: (rng.randint(10, 60), []),  # source
        2: (rng.randint(10, 40), [1]),  # fast branch
        3: (rng.randint(150, 200), [1]),  # slow branch
        4: (rng.randint(10, 60), [2, 3]),  # join of both
        5: (rng.randint(120, 180), [2]),  # downstream of the fast branch alone
    }


def fanout(rng: random.Random, width: int = 200) -> Dag:
    dag: Dag = {1: (rng.randint(10, 200), [])}
    for i in range(2, width + 2):
        dag[i] = (rng.randint(10, 200), [1])
    dag[width + 2] = (rng.randint(10, 200), list(range(2, width + 2)))
    return dag


def layered(rng: random.Random, layers: int = 15, width: int = 20) -> Dag:
    dag: Dag = {}
    rows: list[list[int]] = []
    next_id = 1
    for layer in range(layers):
        row = []
        for _ in range(width):
            parents: set[int] = set()
            if layer:
                parents.add(rng.choice(rows[-1]))  # at least one parent in the previous layer
                for _ in range(rng.randint(0, 2)):  # and up to two more from any earlier layer
                    parents.add(rng.choice(rng.choice(rows)))
            dag[next_id] = (rng.randint(10, 200), sorted(parents))
            row.append(next_id)
            next_id += 1
        rows.append(row)
    return dag


def braided(rng: random.Random, length: int = 20, every: int = 3) -> Dag:
    dag: Dag = {}
    a_prev = b_prev = 0
    for step in range(length):
        a, b = 2 * step + 1, 2 * step + 2
        cross = step > 0 and step % every == 0
        dag[a] = (rng.randint(10, 200), [p for p in (a_prev, b_prev if cross else 0) if p])
        dag[b] = (rng.randint(10, 200), [p for p in (b_prev, a_prev if cross else 0) if p])
        a_prev, b_prev = a, b
    return dag


def critical_path(dag: Dag) -> float:
    """Longest path in seconds, by sleep durations (ids are in topological order)."""
    finish: dict[int, int] = {}
    for i in sorted(dag):
        ms, parents = dag[i]
        finish[i] = ms + max((finish[p] for p in parents), default=0)
    return max(finish.values()) / 1000


# -- runners -----------------------------------------------------------------------------


def plan_text(dag: Dag) -> str:
    lines = []
    for i in sorted(dag):
        ms, parents = dag[i]
        refs = f", [{', '.join(f'${p}' for p in parents)}]" if parents else ""
        lines.append(f"{i}. sleep_ms({ms}{refs})")
    lines.append(f"{max(dag) + 1}. join()")
    return "\n".join(lines)


async def run_plait(dag: Dag) -> float:
    plan = plan_text(dag)
    start = time.perf_counter()
    result = await plait.aexecute(plan, tools=[sleep_ms])
    elapsed = time.perf_counter() - start
    assert result.status == "done", result.error
    return elapsed


class State(TypedDict):
    done: Annotated[list[int], operator.add]


def build_langgraph(dag: Dag):  # -> CompiledStateGraph
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(State)

    def make(i: int, ms: int):
        async def node(state: State) -> dict:
            await asyncio.sleep(ms / 1000)
            return {"done": [i]}

        return node

    children: dict[int, int] = dict.fromkeys(dag, 0)
    for i, (ms, parents) in dag.items():
        graph.add_node(f"n{i}", make(i, ms))
        for p in parents:
            children[p] += 1
        if not parents:
            graph.add_edge(START, f"n{i}")
        elif len(parents) == 1:
            graph.add_edge(f"n{parents[0]}", f"n{i}")
        else:
            graph.add_edge([f"n{p}" for p in parents], f"n{i}")
    for i, count in children.items():
        if count == 0:
            graph.add_edge(f"n{i}", END)
    return graph.compile()


async def run_langgraph(app, n: int) -> float:
    start = time.perf_counter()
    out = await app.ainvoke({"done": []}, config={"recursion_limit": 10_000})
    elapsed = time.perf_counter() - start
    assert len(out["done"]) == n, f"langgraph ran {len(out['done'])} of {n} nodes"
    return elapsed


# -- main --------------------------------------------------------------------------------


async def main(repeat: int, seed: int) -> None:
    shapes = {"diamond": diamond, "fanout": fanout, "layered": layered, "braided": braided}
    print(f"makespan ÷ critical path, median of {repeat} (1.00 is perfect; plait target ≤ 1.03)")
    head = f"{'shape':<9} {'tasks':>5} {'crit s':>7} {'plait s':>8} {'plait':>6}"
    print(f"{head} {'langgraph s':>11} {'langgraph':>9}")
    for k, (name, make) in enumerate(shapes.items()):
        dag = make(random.Random(seed + k))
        crit = critical_path(dag)
        app = build_langgraph(dag)
        await run_plait(dag)  # warm-up: imports, pydantic models, caches
        await run_langgraph(app, len(dag))
        ours, theirs = [], []
        for _ in range(repeat):  # interleaved, so drift hits both alike
            ours.append(await run_plait(dag))
            theirs.append(await run_langgraph(app, len(dag)))
        p, lg = statistics.median(ours), statistics.median(theirs)
        print(
            f"{name:<9} {len(dag):>5} {crit:>7.3f} {p:>8.3f} {p / crit:>6.3f}"
            f" {lg:>11.3f} {lg / crit:>9.3f}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    asyncio.run(main(args.repeat, args.seed))
