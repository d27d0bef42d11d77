"""lm-eval requests built by lapeval itself (LSS matrices, the demo, benchmarks): one helper, so that every
request carries a task name (which ``lang=self`` routes on and caches key on) and a distinct doc index.

lm-eval 0.4.13's ``Instance`` takes ``metadata=(task_name, doc_id, repeats)`` and unpacks it; its 0.5 line
makes ``task_name=`` and ``doc_id=`` required keywords. :func:`instances` passes whichever of these the
installed ``Instance`` declares (read once from its dataclass fields), so it builds the same requests on both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence


@functools.lru_cache(maxsize=None)
def _instance_fields() -> frozenset[str]:
    """The keywords the installed lm-eval ``Instance`` accepts (its dataclass ``__init__`` fields)."""
    from lm_eval.api.instance import Instance

    return frozenset(f.name for f in dataclasses.fields(Instance) if f.init)


def make_instance(request_type: str, arguments: tuple, task_name: str, doc_id: int, idx: int = 0, doc=None):
    """One lm-eval ``Instance``, every field by keyword: ``task_name`` / ``doc_id`` directly where the
    installed ``Instance`` declares them, and as ``metadata`` where it has that (0.4.x unpacks it after init)."""
    from lm_eval.api.instance import Instance

    fields = _instance_fields()
    given = {"request_type": request_type, "doc": {} if doc is None else doc, "arguments": tuple(arguments),
             "idx": idx, "metadata": (task_name, doc_id, 1), "task_name": task_name, "doc_id": doc_id, "repeats": 1}
    return Instance(**{k: v for k, v in given.items() if k in fields})


def instances(request_type: str, arguments: Sequence[tuple], task_name: str | Sequence[str]) -> list:
    """lm-eval ``Instance`` objects of ``request_type`` (``loglikelihood``, ``generate_until`` ...), one per
    argument tuple, of task ``task_name`` (one name, or one per argument), numbered 0, 1, ... per task as
    their doc ids."""
    names = [task_name] * len(arguments) if isinstance(task_name, str) else list(task_name)
    if len(names) != len(arguments):
        raise ValueError(f"{len(names)} task names for {len(arguments)} requests")
    seen: dict[str, int] = {}
    out = []
    for a, name in zip(arguments, names):
        doc_id = seen[name] = seen.get(name, -1) + 1
        out.append(make_instance(request_type, a, name, doc_id))
    return out


def loglikelihoods(lm, pairs: Sequence[tuple[str, str]], task_name: str) -> dict[tuple[str, str], float]:
    """``{(context, continuation): log P(continuation | context)}`` for the distinct ``pairs``, scored in one
    ``lm.loglikelihood`` call."""
    unique = list(dict.fromkeys(pairs))
    out = lm.loglikelihood(instances("loglikelihood", unique, task_name), disable_tqdm=True)
    return {p: float(r[0]) for p, r in zip(unique, out, strict=True)}
