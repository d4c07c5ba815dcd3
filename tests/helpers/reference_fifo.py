"""Per-queue FIFO written apart from the simulator's engine (issue 17: an independent reference simulation that
must agree exactly with `simulate` on a trace slice): tests/unit/test_sim_traces.py on a synthetic slice,
tests/validation/test_sim_trace_waits.py on a slice of a real trace."""

from __future__ import annotations

from bastion.sim.inputs import Job


def reference_fifo(jobs: list[Job], queue_pool: dict[str, str], pools: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Per-queue FIFO written apart from the engine: every node an array of per-GPU free hundredths; gangs take
    the lowest idle nodes, a single-node job the fullest node that fits (then the lowest idle), a share the
    tightest partly shared GPU. Returns start hours."""
    grids = {name: [[100] * per for _ in range(n)] for name, (n, per) in pools.items()}
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].submit_hours, i))
    rank = {i: k for k, i in enumerate(order)}
    waiting: list[int] = []
    running: list[tuple[float, list]] = []
    starts: dict[str, float] = {}
    times = sorted({j.submit_hours for j in jobs})
    while times:
        now = times.pop(0)
        for end, taken in [r for r in running if r[0] == now]:
            running.remove((end, taken))
            for grid, node, gpu, amount in taken:
                grid[node][gpu] += amount
        waiting = sorted(waiting + [i for i in order if jobs[i].submit_hours == now], key=rank.get)
        blocked = set()
        for i in list(waiting):
            job = jobs[i]
            if job.tenant in blocked:
                continue
            pool = queue_pool[job.tenant]
            taken = place(grids[pool], pools[pool][1], job.recorded.gpus)
            if taken is None:
                blocked.add(job.tenant)
                continue
            waiting.remove(i)
            starts[job.id] = now
            limit = job.recorded.time_limit_hours
            end = now + (min(job.recorded.duration_hours, limit) if limit else job.recorded.duration_hours)
            running.append((end, taken))
            times = sorted({*times, end})
    return starts


def place(grid: list[list[int]], per: int, gpus: float) -> list | None:
    """Take room for `gpus` GPUs on `grid` (None: no room): the spots taken, to give back at the end."""
    idle = [n for n, node in enumerate(grid) if node.count(100) == per]
    if gpus >= per:
        want = -(-int(gpus) // per)
        return None if len(idle) < want else _take(grid, [(n, g, 100) for n in idle[:want] for g in range(per)])
    whole, amount = -(-int(gpus * 100) // 100), 100
    if gpus < 1:
        whole, amount = 1, round(gpus * 100)
        spots = sorted((free, n, g) for n, node in enumerate(grid) for g, free in enumerate(node)
                       if amount <= free < 100)
        if spots:
            return _take(grid, [(spots[0][1], spots[0][2], amount)])
    partly = sorted((node.count(100), n) for n, node in enumerate(grid) if whole <= node.count(100) < per)
    candidates = [n for _, n in partly] + idle
    if not candidates:
        return None
    n = candidates[0]
    return _take(grid, [(n, g, amount) for g in [g for g, free in enumerate(grid[n]) if free == 100][:whole]])


def _take(grid: list[list[int]], spots: list[tuple[int, int, int]]) -> list:
    for n, g, amount in spots:
        grid[n][g] -= amount
    return [(grid, n, g, amount) for n, g, amount in spots]
