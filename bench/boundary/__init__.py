"""OOM boundaries: the largest sequence length (batch 1) and the largest batch at reference
lengths that fit, found by guided bisection; every probe runs under the cap in a worker whose
allocator is in the state a fresh load leaves.

`search` the pure search, `schedule` the slots on the host GPU, `run` one profile's search and
its files.
"""

from bench.boundary.run import BoundaryRun
from bench.boundary.schedule import run_boundaries
from bench.boundary.search import SEQ_STEP, BoundaryTask, plan_tasks, search

__all__ = ["SEQ_STEP", "BoundaryRun", "BoundaryTask", "plan_tasks", "run_boundaries", "search"]
