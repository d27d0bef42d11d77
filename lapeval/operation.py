"""An operation on language neurons and its one spelling.

An intervention step is ``MODE[:VALUE][@LAYERS]`` — ``zero``, ``set:p_max``, ``scale:2@0-5``,
``add:tt_max@10-17`` — read by :func:`parse_spec` and written back by :func:`spec_label`, wherever it
appears: ``lape`` model arguments (``mode=``, ``value=``, ``layers=``), grid cells, search-factor candidates,
reports and file names (:func:`file_name`: ``:`` becomes ``=``, as ``:`` is not allowed in Windows file
names). The formulas of each mode are in :mod:`lapeval.intervene`. Pure Python: no torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import LapevalError

MODES = ("zero", "set", "scale", "add")
MASK_VALUES = ("p_max", "p_median")
_TT = re.compile(r"^tt_(max|p(\d+(?:\.\d+)?))$")


class InterventionError(LapevalError, ValueError):
    """A bad intervention setting (mode, value, layers, languages): one line naming the fix."""


# ---- the operation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """``mode`` (zero | set | scale | add) with its ``value``: a float, ``p_max``/``p_median``,
    ``tt_max`` or ``tt_p<q>`` (see the module docstring for the formulas)."""

    mode: str
    value: float | str | None = None

    @classmethod
    def parse(cls, mode, value=None) -> "Operation":
        if mode is None or str(mode).strip() == "":
            raise InterventionError(f"mode= is required with neurons=: use one of {', '.join(MODES)}")
        m = str(mode).strip().lower()
        if m not in MODES:
            raise InterventionError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        v = _parse_value(value)
        if m == "zero":
            if v not in (None, 0.0):
                raise InterventionError(f"mode=zero takes no value (got value={value!r}); use mode=set,value=... to set")
            return cls("zero", None)
        if v is None:
            hint = "a factor such as 2" if m == "scale" else "a number, p_max, p_median, tt_max or tt_p10"
            raise InterventionError(f"mode={m} needs value= ({hint})")
        if m == "scale" and not isinstance(v, float):
            raise InterventionError(f"mode=scale takes a numeric factor, not value={value!r}")
        return cls(m, v)

    @property
    def mask_values(self) -> str | None:
        """``p_max`` / ``p_median`` when the value comes from the mask file."""
        return self.value if self.value in MASK_VALUES else None

    @property
    def statistic(self) -> tuple[str, float] | None:
        """``("max", 0)`` for tt_max, ``("quantile", q)`` for tt_p<q>, None otherwise."""
        if not isinstance(self.value, str):
            return None
        m = _TT.match(self.value)
        if m is None:
            return None
        return ("max", 0.0) if m.group(1) == "max" else ("quantile", float(m.group(2)))

    @property
    def label(self) -> str:
        """The canonical spelling: ``zero``, ``set:p_max``, ``scale:2``, ``add:0.5``."""
        return self.mode if self.value is None else f"{self.mode}:{format_value(self.value)}"

    def describe(self) -> str:
        return self.label

    def __str__(self) -> str:
        return self.label


def format_value(v) -> str:
    """``2.0`` → ``2``, ``0.5`` → ``0.5``, ``p_max`` → ``p_max``."""
    return format(v, "g") if isinstance(v, float) else str(v)


def _parse_value(value) -> float | str | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise InterventionError(f"value={value!r} is not a number, p_max, p_median, tt_max or tt_p<q>")
    if isinstance(value, (int, float)):
        f = float(value)
        if not math.isfinite(f):
            raise InterventionError(f"value={value!r} is not a finite number")
        return f
    s = str(value).strip().lower()
    if s in MASK_VALUES:
        return s
    m = _TT.match(s)
    if m:
        if m.group(2) is not None and not 0 < float(m.group(2)) <= 100:
            raise InterventionError(f"value={value!r}: the percentile must be in (0, 100]")
        return s
    try:
        f = float(s)
    except ValueError:
        raise InterventionError(
            f"bad value={value!r}: use a number, p_max, p_median, tt_max (layer maximum) or tt_p10 (10th percentile)"
        ) from None
    if not math.isfinite(f):
        raise InterventionError(f"value={value!r} is not a finite number")
    return f


# ---- which neurons ---------------------------------------------------------------------------------
def parse_layers(spec, n_layers: int) -> tuple[int, ...] | None:
    """``None``/``all`` → every layer; an int, a list, or a string such as ``0-5``, ``0+3+17``, ``[2,3]``."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    if isinstance(spec, bool):
        raise InterventionError(f"bad layers={spec!r}: give layer numbers such as 0-5 or 0+3+17")
    if isinstance(spec, (int, float)):
        items = [spec]
    elif isinstance(spec, (list, tuple, set)):
        items = list(spec)
    else:
        items = [p for p in re.split(r"[+|;,\s]+", str(spec).strip().strip("[]()")) if p]
    out: set[int] = set()
    for item in items:
        try:
            if isinstance(item, str) and re.fullmatch(r"\d+\s*[-:]\s*\d+", item):
                lo, hi = (int(x) for x in re.split(r"[-:]", item))
                if hi < lo:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                f = float(item)
                if f != int(f):
                    raise ValueError
                out.add(int(f))
        except (ValueError, TypeError):
            raise InterventionError(f"bad layers={spec!r}: give layer numbers such as 0-5 or 0+3+17") from None
    bad = sorted(l for l in out if not 0 <= l < n_layers)
    if bad:
        raise InterventionError(f"layers={spec!r} names layer {bad[0]} but the model has layers 0..{n_layers - 1}")
    return tuple(sorted(out))


def layers_label(spec) -> str | None:
    """The canonical spelling of a layer subset, without checking it against a model: sorted, runs joined
    (``[17, 0, 1, 2]`` → ``0-2+17``); None for all layers."""
    chosen = parse_layers(spec, 1 << 30)
    if chosen is None:
        return None
    runs: list[list[int]] = []
    for l in chosen:
        if runs and l == runs[-1][1] + 1:
            runs[-1][1] = l
        else:
            runs.append([l, l])
    return "+".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_spec(spec, what: str = "intervention") -> tuple[Operation, str | None]:
    """(operation, canonical layers or None) of one intervention step, in any of its forms:

    * a string ``MODE[:VALUE][@LAYERS]`` (``set:p_max``, ``zero``, ``scale:2@0-5``; ``=`` is accepted for
      ``:`` as in file names, ``set=p_max``);
    * a mapping ``{mode: set, value: p_max, layers: 0-5}``;
    * a tuple ``(mode, value[, layers])`` or an :class:`Operation`.

    ``what`` names the spec in error messages (``candidate``, ``intervention``).
    """
    if isinstance(spec, Operation):
        return spec, None
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"mode", "value", "layers"})
        if unknown:
            raise InterventionError(f"{what} {spec}: unknown key(s) {', '.join(map(str, unknown))}; "
                                    f"use mode:, value: and layers:")
        if "mode" not in spec:
            raise InterventionError(f"{what} {spec}: needs mode: (zero, set, scale or add)")
        mode, value, layers = spec["mode"], spec.get("value"), spec.get("layers")
    elif isinstance(spec, (tuple, list)):
        if not 1 <= len(spec) <= 3:
            raise InterventionError(f"{what} {spec!r}: give (mode, value[, layers])")
        mode, value, layers = (*spec, None, None)[:3]
    elif isinstance(spec, str):
        text = spec.strip()
        text, _, layers = text.partition("@")
        sep = min((i for i in (text.find(":"), text.find("=")) if i >= 0), default=-1)
        mode, value = (text[:sep], text[sep + 1:]) if sep >= 0 else (text, None)
        layers = layers or None
    else:
        raise InterventionError(f"{what} {spec!r}: write MODE[:VALUE][@LAYERS], e.g. set:p_max or "
                                f"scale:2@0-5, or a mapping with mode:/value:/layers:")
    try:
        op = Operation.parse(mode, value)
        return op, layers_label(layers)
    except InterventionError as e:
        if isinstance(spec, (tuple, list)):  # shown as its string form, ("scale", 2) as 'scale:2'
            spec = ":".join(str(x) for x in spec if x is not None)
        raise InterventionError(f"{what} {spec!r}: {e}") from None


def spec_label(op: Operation, layers=None) -> str:
    """``set:p_max``, ``set:p_max@0-5``: the one label of an operation on a layer subset."""
    lab = layers_label(layers)
    return op.label + (f"@{lab}" if lab else "")


def canonical_label(spec) -> str:
    """The canonical label of any spelling of a step (``set=p_max`` → ``set:p_max``)."""
    return spec_label(*parse_spec(spec))


def file_name(label: str) -> str:
    """A label as a file or folder name: ``:`` → ``=``, anything outside ``[A-Za-z0-9=@+._-]`` → ``_``."""
    return re.sub(r"[^A-Za-z0-9=@+._-]", "_", label.replace(":", "="))
