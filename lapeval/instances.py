"""lm-eval requests built by lapeval itself (LSS matrices, the demo, benchmarks): one helper, so that every
request carries a task name (which ``lang=self`` routes on and caches key on) and a distinct doc index.
"""

from __future__ import annotations

from typing import Sequence


def instances(request_type: str, arguments: Sequence[tuple], task_name: str | Sequence[str]) -> list:
    """lm-eval ``Instance`` objects of ``request_type`` (``loglikelihood``, ``generate_until`` ...), one per
    argument tuple, of task ``task_name`` (one name, or one per argument), numbered 0, 1, ... per task as
    their doc ids."""
    from lm_eval.api.instance import Instance

    names = [task_name] * len(arguments) if isinstance(task_name, str) else list(task_name)
    if len(names) != len(arguments):
        raise ValueError(f"{len(names)} task names for {len(arguments)} requests")
    seen: dict[str, int] = {}
    out = []
    for a, name in zip(arguments, names):
        doc_id = seen[name] = seen.get(name, -1) + 1
        out.append(Instance(request_type=request_type, doc={}, arguments=tuple(a), idx=0, metadata=(name, doc_id, 1)))
    return out


def loglikelihoods(lm, pairs: Sequence[tuple[str, str]], task_name: str) -> dict[tuple[str, str], float]:
    """``{(context, continuation): log P(continuation | context)}`` for the distinct ``pairs``, scored in one
    ``lm.loglikelihood`` call."""
    unique = list(dict.fromkeys(pairs))
    out = lm.loglikelihood(instances("loglikelihood", unique, task_name), disable_tqdm=True)
    return {p: float(r[0]) for p, r in zip(unique, out, strict=True)}
