"""Spreading a grid's cells over ranks: processes of one ``torchrun`` / ``accelerate launch`` job (which talk
through ``torch.distributed``), or the tasks of a job array (``--shard I/N``, e.g. Slurm's, which do not).

The partition is a pure function of the cell list and the rank count, so every rank computes the same one
without talking, and a rerun with another rank count still finds every finished cell (cells are files,
keyed by what determines them, not by the rank that wrote them)::

    cells in model order c_1 .. c_n, expected costs w_i, W = Σ w_i, N ranks
    rank(c_i) = min(N - 1, ⌊(w_1 + … + w_{i-1} + w_i / 2) · N / W⌋)

i.e. the cell list is cut into N consecutive stretches of about W / N each: every rank gets a balanced
share, and, the cells of one model being consecutive, a rank loads at most ⌈its share / model⌉ + 1 models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import UsageError


@dataclass(frozen=True)
class Shard:
    """This process's part: ``index`` of ``count``; ``distributed`` when the ranks share a process group
    (``torch.distributed``: a barrier before the summary), False for a job-array shard or a lone process."""

    index: int = 0
    count: int = 1
    distributed: bool = False

    @property
    def leader(self) -> bool:
        """Whether this process writes what the whole grid shares (the summary): rank 0 of a process group;
        a lone process; never a job-array shard (run ``lapeval grid --summary-only`` once they are done)."""
        return self.index == 0 and (self.distributed or self.count == 1)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec) -> Shard | None:
    """``"I/N"`` (0 ≤ I < N, as Slurm's ``--array=0-3`` with ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)
    → :class:`Shard`; None/empty → None. A one-line error otherwise."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if m is None:
        raise UsageError(f"--shard {spec!r}: write I/N (this job's index, from 0, and the number of jobs), e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {spec}: the index must be in 0..N-1 (N ≥ 1); Slurm arrays: --array=0-{max(n - 1, 0)}")
    return Shard(i, n, False)


def world() -> tuple[int, int]:
    """(rank, world size) that ``torchrun`` / ``accelerate launch`` put in the environment; (0, 1) alone."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def current(spec=None, backend: str | None = None) -> Shard:
    """This process's shard: ``spec`` (``--shard I/N``) when given; else, under ``torchrun`` / ``accelerate
    launch`` (``WORLD_SIZE`` > 1), its rank in a ``torch.distributed`` group (joined here if not yet: gloo on
    CPU, nccl with CUDA); else the whole grid."""
    given = parse_shard(spec)
    if given is not None:
        return given
    rank, size = world()
    if size <= 1:
        return Shard()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return Shard(dist.get_rank(), dist.get_world_size(), True)


def barrier(shard: Shard) -> None:
    """Wait for every rank of a process group (no-op otherwise)."""
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def partition(costs: Sequence[float], count: int) -> list[int]:
    """The rank of each item (in order): consecutive stretches of about equal total cost (module docstring)."""
    if count < 1:
        raise ValueError("count must be ≥ 1")
    total = float(sum(costs))
    if total <= 0:
        return [min(count - 1, i * count // max(len(costs), 1)) for i in range(len(costs))]
    out, before = [], 0.0
    for w in costs:
        out.append(min(count - 1, int((before + w / 2) * count / total)))
        before += w
    return out
