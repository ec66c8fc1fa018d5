"""Writing a benchmark's result files: whole or not at all, folders created as needed.

    from results_io import write_json, write_text      # from a script in benchmarks/
    write_json("benchmarks/results/speed.json", {"matmul_gflops": 312.4})
    write_text("benchmarks/results/speed.md", ["# Speed", "", "| ... |"])
"""

import json
import os

from scmedal_lite.io import atomic_write


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)


def write_text(path: str, lines) -> None:
    """Write ``lines`` (a list of lines, or one string) to ``path`` atomically, ending with a newline."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = lines if isinstance(lines, str) else "\n".join(lines)
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text.rstrip("\n") + "\n")
