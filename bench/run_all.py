"""Run every benchmark in bench/ one after the other, with this interpreter.

    python bench/run_all.py            # dag.py, scale.py, llmcompiler.py (about 5 minutes)
    python bench/run_all.py dag scale  # just those

Extra arguments after `--` go to every script, e.g. `python bench/run_all.py -- --repeat 5`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["dag", "scale", "llmcompiler"]


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    chosen = argv or SCRIPTS
    unknown = [s for s in chosen if s not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r} (choose from {', '.join(SCRIPTS)})")
        return 2
    status = 0
    for name in chosen:
        print(f"\n== bench/{name}.py ==", flush=True)
        status |= subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
