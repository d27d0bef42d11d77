"""Interventions on language neurons — deactivate, amplify, scale, shift — as hook context managers.

Notation (docs/method.md §2–3). ``a ∈ R^{B×T×d_ff}`` is the output of layer l's FFN non-linearity (the
neuron site of :mod:`lapeval.sites`: ``act(W_gate x)`` before the gate product, ``act(W_1 x)`` in plain
MLPs). ``N^{(l)}`` are the selected neurons of layer l (the union over the chosen languages of a mask
file), ``M ∈ {0,1}^{B×T}`` marks the real (non-pad) tokens of the current forward call. For every layer l,
row b, **every** position t (prompt, continuation and generated tokens; pad positions too — harmless, their
outputs are discarded) and every j ∈ N^{(l)}::

    zero       a[b,t,j] ← 0                       deactivation (Tang et al. 2024, method.md §2.1)
    set   v    a[b,t,j] ← v_j(b)                  patched amplification with p_max / p_median (§3.3)
    scale s    a[b,t,j] ← s · a[b,t,j]
    add   v    a[b,t,j] ← a[b,t,j] + v_j(b)

where ``v`` is one of

* a number ``c``: ``v_j = c`` for every neuron;
* ``p_max`` / ``p_median``: the mask file's per-neuron value of the language, ``v_j = p[L,l,j]`` (a neuron
  shared by several chosen languages gets the largest of their values);
* a test-time statistic of row b over its **real tokens only**, in the current forward call (§3.3)::

      tt_max    v(b) = max { a[b,t,j'] : M[b,t] = 1, all j' }             ("set/add the layer maximum")
      tt_p<q>   v(b) = k-th smallest of { a[b,t,j'] : M[b,t] = 1, all j' },  k = max(⌊q/100 · n_b · d_ff⌋, 1)

  (``tt_p10`` is the reference's 10th-percentile "soft deactivation"). The reference computes these on
  batch row 0 only (method.md §8 P2-4); here every row gets its own statistic, so results do not depend on
  the batch size or on the other rows. The current call is the whole sequence in log-likelihood scoring,
  the prompt at generation prefill, and the one new token at each cached decode step (as the reference,
  which recomputes the statistic on every call).

A graded value ``α·v`` (``add:2*p_max``) uses ``α · v_j`` in place of ``v_j``.

**Composites** (:class:`Composite`): several terms in one forward, applied in the order given, each to the
output of the previous one — ``zero@en;set:p_max@fr`` zeroes English's neurons, then sets French's to
p_max, so a neuron both hold ends at p_max (a later ``set``/``zero`` wins; a later ``scale``/``add``
composes). A test-time statistic is taken on the activations as the earlier terms left them.

**Scope**: where the terms act, per row b, from ``s_b`` = the position of the first generated (or, for a
log-likelihood request, continuation) token in absolute coordinates (``τ`` = absolute position of a
position of the current call: its index plus the tokens already in the KV cache)::

    all         every real token  (M[b,t] = 1)
    prompt      M[b,t] = 1 and τ <  s_b
    generation  M[b,t] = 1 and τ >= s_b
    last        M[b,t] = 1 and τ >= s_b - 1     (the last prompt token, which predicts the first new token)

A log-likelihood row of real length n_b holds its context and all but the last continuation token
(lm-eval scores ``inp = (context + continuation)[:-1]``), so ``s_b = n_b - K_b + 1`` for a continuation of
K_b tokens (:meth:`Session.set_continuations`); a generate call left-pads its prompts to length P, so
``s_b = P`` in the prefill and every cached decode step (:meth:`Session.set_prompt_length`). So a
continuation's log-likelihood under a scope equals the sum of its tokens' log-probabilities when generated
under that scope. Test-time statistics stay over all real tokens of the call.

Several interventions can run in one forward, one per batch row (``rows``): row b gets
``interventions[rows[b]]`` (``-1`` = untouched). This serves ``lang=self`` and grid cells batched as rows.

**Residual terms** (:meth:`Intervention.from_vectors`, DiffMean steering; method.md §11) act on the output
``h ∈ R^{B×T×hidden}`` of decoder layer l (the residual stream) instead of the neurons, with the same rows,
scopes and composites::

    add α      h[b,t,:] ← h[b,t,:] + α · v^(l)      v^(l) = mean over the chosen languages L of v_L^(l)

**Routed layers** (mixture-of-experts, :mod:`lapeval.moe`; docs/method §12): a layer's neuron i = e·d_e + j is
neuron j of expert e (shared FFNs after the experts). The experts' non-linearity sees rows (token n = b·T + t,
expert e) (:class:`~lapeval.moe.RowPlan`); on each row the formulas above edit the neurons j that the terms
select in expert e, for the row's b (its intervention) and (b, t) (its scope); a token not routed to e has
no row there and is untouched. Shared FFNs are edited as dense sites on every token. Test-time statistics
are refused on routed layers.

**Router terms** (``route:``, :meth:`Intervention.from_experts`) act on a routed layer's router logits
``z ∈ R^{N×E}`` (token n = b·T + t) before the router chooses, on the experts X^(l) of the chosen languages (the
mask's ``L.expert``), per row b and within the scope at (b, t)::

    ban        z[n,e] ← −∞        e ∈ X^(l)   (no token is routed to e; the router renormalises over the rest)
    bias β     z[n,e] ← z[n,e] + β

and where a router adds a per-expert bias of its own before choosing (DeepSeek-V3's correction bias) a banned
expert's choice score is −∞ too (:func:`~lapeval.moe.edit_router`). ``bias:0`` touches nothing. A ban that
would leave a token fewer than top-k experts is refused (:func:`~lapeval.moe.ban_leaves_routing`).

Hooks are forward hooks on the sites' non-linearity modules (and, for residual terms, on the decoder layers),
editing the output in place; they live only inside :func:`intervene` and are removed on exit, also when an
exception is raised.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from ..moe import (
    ExpertSite,
    RowPlan,
    ban_leaves_routing,
    edit_gate,
    edit_router,
    find_neuron_sites,
    is_expert_sites,
    router_groups,
)
from ..sites import Site
from .operation import (  # noqa: F401
    MASK_VALUES,
    MODES,
    ROUTE_MODES,
    InterventionError,
    Operation,
    adds_vector,
    parse_layers,
    parse_scope,
)


@dataclass
class Intervention:
    """One operation on a set of neurons: ``neurons[l]`` the sorted int64 indices in layer l and, for
    ``p_max``/``p_median``, ``values[l]`` their float32 values. Layers without neurons are absent."""

    op: Operation
    neurons: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    languages: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    # or "residual": ``neurons[l]`` are then all hidden dimensions, ``values[l]`` α · v^(l); or "route":
    # ``neurons[l]`` are the experts of layer l whose router logits the term edits
    site: str = "neuron"

    @classmethod
    def from_vectors(cls, vectors, languages: Sequence[str], mode, value=None, layers=None) -> "Intervention":
        """``add:α`` of the mean of ``languages``' residual vectors (a :class:`~lapeval.vectors.ResidualVectors`)
        at ``layers`` (default all). α = 0 touches nothing (no hook: bit-identical to no intervention)."""
        op = mode if isinstance(mode, Operation) else Operation.parse(mode, value)
        if not adds_vector(op):
            raise InterventionError(f"{op.label} on residual vectors: a vector term adds α · v (write add:α, e.g. add:4)")
        chosen = parse_layers(layers, vectors.n_layers) if not isinstance(layers, tuple) else layers
        langs = tuple(dict.fromkeys(vectors.code(l) for l in languages))
        if not langs:
            raise InterventionError(f"no language given: use codes of these vectors ({', '.join(vectors.languages)})")
        neurons, values = {}, {}
        if op.value != 0.0:
            v = torch.stack([vectors.vectors[l] for l in langs]).double().mean(0)  # [n_layers, hidden]
            for l in range(vectors.n_layers) if chosen is None else chosen:
                neurons[l] = torch.arange(vectors.hidden)
                values[l] = (op.value * v[l]).to(torch.float32)
        return cls(op, neurons, values, langs, chosen, "residual")

    @classmethod
    def from_experts(cls, mask, languages: Sequence[str], op, layers=None) -> "Intervention":
        """A router term (``ban``, ``bias:β``, :meth:`Operation.parse_route`) on the union of ``languages``'
        experts in a mixture-of-experts :class:`~lapeval.masks.NeuronMask` (``L.expert_layer`` / ``L.expert``),
        in ``layers`` (default all). ``bias:0`` touches nothing (no hook). A ban leaving a layer fewer than
        top-k experts is a one-line error."""
        if not isinstance(op, Operation):
            op = Operation.parse_route(*(op.split(":", 1) if ":" in op else (op, None)))
        if op.mode not in ROUTE_MODES:
            raise InterventionError(f"{op.label} on experts: a router term is route:ban or route:bias:β")
        if not mask.is_moe:
            raise InterventionError(f"route:{op.label} acts on a mixture-of-experts router, and this mask is of a "
                                    "dense model: use neuron terms (zero, set, scale, add)")
        if not mask.experts:
            raise InterventionError(f"route:{op.label}: the mask{' ' + str(mask.path) if mask.path else ''} holds no "
                                    "language-specific experts; select them with lapeval select on the routed "
                                    "model's statistics (--expert-top-rate)")
        chosen = parse_layers(layers, mask.n_layers) if not isinstance(layers, tuple) else layers
        langs = tuple(dict.fromkeys(mask.code(l) for l in languages))
        if not langs:
            raise InterventionError(f"no language given: use codes of this mask ({', '.join(mask.languages)})")
        held = mask.expert_assignment()[[mask.languages.index(l) for l in langs]].any(0)  # [n_layers, E]
        neurons = {}
        if not (op.mode == "bias" and op.value == 0.0):
            for l in range(mask.n_layers) if chosen is None else chosen:
                e = torch.nonzero(held[l], as_tuple=True)[0]
                if e.numel():
                    neurons[l] = e
        if op.mode == "ban":  # before any model loads; grouped top-k is checked on the router (Session)
            moe = mask.meta["moe"]
            for l, e in neurons.items():
                why = ban_leaves_routing(int(moe["layer_experts"][l]), int(moe["top_k"]), set(e.tolist()))
                if why:
                    raise InterventionError(f"route:ban@{'+'.join(langs)} on layer {l}: {why}; ban in fewer layers "
                                            "(@LAYERS) or use route:bias:β")
        return cls(op, neurons, {}, langs, chosen, "route")

    @classmethod
    def from_mask(cls, mask, languages: Sequence[str], mode, value=None, layers=None) -> "Intervention":
        """The union of ``languages``' neurons in a :class:`~lapeval.masks.NeuronMask` (``layers``: a subset)."""
        op = mode if isinstance(mode, Operation) else Operation.parse(mode, value)
        chosen = parse_layers(layers, mask.n_layers) if not isinstance(layers, tuple) else layers
        langs = tuple(dict.fromkeys(mask.code(l) for l in languages))  # one-line MaskError if unknown
        if not langs:
            raise InterventionError(f"no language given: use codes of this mask ({', '.join(mask.languages)})")
        idx = torch.zeros(mask.n_layers, mask.d_ff, dtype=torch.bool)
        vals = torch.full((mask.n_layers, mask.d_ff), -math.inf) if op.mask_values else None
        for lang in langs:
            s = mask.sets[lang]
            idx[s.layer, s.neuron] = True
            if vals is not None:
                mask.values_per_layer(lang, op.mask_values)  # one-line MaskError when the file has none
                v = s.values[op.mask_values].to(torch.float32)  # aligned with s.layer / s.neuron
                vals[s.layer, s.neuron] = torch.maximum(vals[s.layer, s.neuron], v)
        neurons, values = {}, {}
        for l in range(mask.n_layers) if chosen is None else chosen:
            j = torch.nonzero(idx[l], as_tuple=True)[0]
            if j.numel():
                neurons[l] = j
                if vals is not None:
                    values[l] = vals[l, j].to(torch.float32)
        return cls(op, neurons, values, langs, chosen)

    @classmethod
    def from_neurons(cls, neurons: dict[int, Sequence[int]], mode, value=None,
                     values: dict[int, Sequence[float]] | None = None) -> "Intervention":
        """From explicit ``{layer: [neuron, ...]}`` (and per-neuron ``values`` for ``set``/``add``)."""
        op = mode if isinstance(mode, Operation) else Operation.parse(mode, "p_max" if values and value is None else value)
        ns, vs = {}, {}
        for l, j in neurons.items():
            j = torch.as_tensor(j, dtype=torch.long).flatten()
            order = torch.argsort(j)
            if j.numel():
                ns[int(l)] = j[order]
                if values is not None:
                    vs[int(l)] = torch.as_tensor(values[l], dtype=torch.float32).flatten()[order]
        if op.mask_values and set(vs) != set(ns):
            raise InterventionError(f"value={op.value} needs per-neuron values for every layer with neurons")
        return cls(op, ns, vs)

    @property
    def n_neurons(self) -> int:
        return sum(int(j.numel()) for j in self.neurons.values())

    def describe(self) -> dict:
        d = {
            "mode": self.op.mode,
            "value": self.op.value,
            "languages": list(self.languages),
            "layers": "all" if self.layers is None else list(self.layers),
            ("n_experts" if self.site == "route" else "n_neurons"): self.n_neurons,
        }
        if self.site != "neuron":
            d["site"] = self.site
        return d


@dataclass
class Composite:
    """Several :class:`Intervention` terms applied in order in one forward, in ``scope`` (module docstring)."""

    terms: tuple[Intervention, ...]
    scope: str = "all"

    def __post_init__(self) -> None:
        self.terms = tuple(self.terms)
        self.scope = parse_scope(self.scope)

    @property
    def n_neurons(self) -> int:
        """Distinct neurons touched by any term."""
        return sum(int(j.numel()) for j in self.neurons.values())

    @property
    def neurons(self) -> dict[int, torch.Tensor]:
        """The union of the terms' neurons per layer."""
        out: dict[int, set] = {}
        for t in self.terms:
            for l, j in t.neurons.items():
                out.setdefault(l, set()).update(j.tolist())
        return {l: torch.tensor(sorted(v), dtype=torch.long) for l, v in sorted(out.items())}

    def describe(self) -> dict:
        return {"terms": [t.describe() for t in self.terms], "scope": self.scope, "n_neurons": self.n_neurons}


def as_composite(iv) -> Composite | None:
    """An :class:`Intervention` as a one-term composite in scope ``all``; a Composite or None as it is."""
    if iv is None or isinstance(iv, Composite):
        return iv
    return Composite((iv,), "all")


# ---- applying it -----------------------------------------------------------------------------------
@dataclass
class ResidualSite:
    """Decoder layer ``layer``: its output (``[B, T, hidden]``, or the first element of a tuple) is the residual
    stream after that layer, where residual terms add their vectors."""

    layer: int
    module: nn.Module
    d_ff: int  # the hidden size (the width residual terms index)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def residual_sites(model: nn.Module) -> list[ResidualSite]:
    """The decoder layers of ``model`` as :class:`ResidualSite` (found from structure, :func:`~lapeval.sites.decoder_layers`)."""
    from ..sites import decoder_layers, hidden_size_of

    hidden = hidden_size_of(model)
    return [ResidualSite(i, m, hidden) for i, m in enumerate(decoder_layers(model)[1])]


@dataclass
class ExpertPart:
    """One hook point of a routed layer (:class:`~lapeval.moe.ExpertSite`) and the span of the layer's flattened
    neurons it holds (docs/method §12): the routed experts ``[0, E·d_e)`` (``shared`` None: the experts'
    non-linearity, rows (token, expert)), or shared FFN ``shared`` at ``[offset, offset + width)`` (its
    non-linearity's output ``[..., width]``, every token, edited as a dense site). A term's neuron i of the
    layer is column i − ``lo`` here."""

    layer: int
    site: ExpertSite
    shared: int | None = None

    @property
    def lo(self) -> int:
        return 0 if self.shared is None else self.site.shared_offsets[self.shared]

    @property
    def d_ff(self) -> int:
        """The width of this part: E·d_e for the routed experts, the shared FFN's width."""
        return self.site.d_routed if self.shared is None else self.site.shared[self.shared].width

    @property
    def module(self) -> nn.Module:
        return self.site.act if self.shared is None else self.site.shared[self.shared].module

    @property
    def device(self) -> torch.device:
        return self.site.device


@dataclass
class RouterPart:
    """The router of a routed layer: its logits ``[N, E]`` are where router terms act (``d_ff``: E, the width
    a term's expert indices are checked against)."""

    layer: int
    site: ExpertSite

    @property
    def d_ff(self) -> int:
        return self.site.n_experts

    @property
    def device(self) -> torch.device:
        return self.site.device


def expert_parts(sites: list[ExpertSite]) -> list[ExpertPart]:
    """Every routed layer's hook points: its routed experts (if E > 0), then each shared FFN."""
    out = []
    for s in sites:
        if s.n_experts:
            out.append(ExpertPart(s.layer, s))
        out += [ExpertPart(s.layer, s, i) for i in range(len(s.shared))]
    return out


def _kind(site) -> str:
    if isinstance(site, ExpertPart):
        return "routed" if site.shared is None else f"shared{site.shared}"
    if isinstance(site, RouterPart):
        return "route"
    return "residual" if isinstance(site, ResidualSite) else "neuron"


def _term_site(site) -> str:
    """The term site (``Intervention.site``) a hook point serves."""
    return "neuron" if isinstance(site, ExpertPart) else _kind(site)


def _select(site, term) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``term``'s (neurons, values) at ``site``: the layer's as they are for a dense or residual site; for an
    :class:`ExpertPart`, those in its span, shifted to start at 0 (a neuron beyond the layer's real width —
    a padded one — is an error)."""
    j = term.neurons.get(site.layer) if term.site == _term_site(site) else None
    if j is None:
        return None, None
    v = term.values.get(site.layer)
    if not isinstance(site, ExpertPart):
        if int(j.max()) >= site.d_ff:
            raise InterventionError(f"layer {site.layer}: neuron {int(j.max())} is outside d_ff={site.d_ff}")
        return j, v
    if int(j.max()) >= site.site.d_ff:
        raise InterventionError(f"layer {site.layer}: neuron {int(j.max())} is outside this layer's "
                                f"{site.site.d_ff} neurons (experts × d_expert + shared)")
    if term.op.statistic:
        raise InterventionError(f"{term.op.label} on a mixture-of-experts model: test-time statistics are not "
                                "defined on routed layers (a token has activations in its top-k experts only); use a "
                                "number, p_max or p_median")
    keep = (j >= site.lo) & (j < site.lo + site.d_ff)
    if not bool(keep.any()):
        return None, None
    return j[keep] - site.lo, None if v is None else v[keep]


class Session:
    """The live state of :func:`intervene`: per-layer tensors on each layer's device, and what the hooks
    know about the current forward call (batch shape, real-token mask, where each row's generated part
    starts).

    For right-padded batches run without an attention mask (lm-eval's log-likelihood path), call
    :meth:`set_lengths` with each row's real length before the forward; for a scope other than ``all``,
    :meth:`set_continuations` (log-likelihood rows) or :meth:`set_prompt_length` (a generate call). Lengths
    and continuations apply to the next call only; the prompt length until changed.
    """

    def __init__(self, sites: list[Site], interventions: list, rows):
        self.sites = sites
        self.interventions = [as_composite(iv) for iv in interventions]
        self.rows = None if rows is None else [int(r) for r in rows]
        if self.rows is not None and any(not -1 <= r < len(self.interventions) for r in self.rows):
            raise InterventionError(f"rows must index the {len(self.interventions)} interventions (or be -1)")
        self.uniform = self.rows is None
        terms = [t for c in self.interventions if c is not None for t in c.terms]
        self.needs_stats = any(t.op.statistic for t in terms)
        self.scoped = any(c is not None and c.scope != "all" for c in self.interventions)
        self.paused = False  # e.g. lm-eval's batch-size probe: no edits
        # per layer, per intervention, per term: (indices, values) on that layer's device, or None
        self._placed: dict[int, list[list[tuple[torch.Tensor, torch.Tensor | None] | None] | None]] = {}
        for site in sites:
            per = []
            for comp in self.interventions:
                if comp is None:
                    per.append(None)
                    continue
                placed = []
                for term in comp.terms:
                    j, v = _select(site, term)
                    if j is None:
                        placed.append(None)
                        continue
                    placed.append((j.to(site.device), None if v is None else v.to(site.device)))
                per.append(placed if any(p is not None for p in placed) else None)
            self._placed[(_kind(site), site.layer)] = per
            if isinstance(site, RouterPart):
                self._check_bans(site, per)
        self._cast: dict[tuple, torch.Tensor] = {}
        self._pending_lengths: list[int] | None = None
        self._pending_conts: list[int] | None = None
        self.prompt_length: int | list[int] | None = None
        self.shape: tuple[int, int] | None = None
        self.mask: torch.Tensor | None = None
        self.starts: torch.Tensor | None = None  # [B] absolute position of each row's first generated token
        self.offset = 0  # absolute position of the call's first position (tokens already cached)
        self._mask_on: dict[torch.device, torch.Tensor] = {}
        self._where: dict[tuple, torch.Tensor] = {}

    def _check_bans(self, part: RouterPart, per) -> None:
        """One-line error when an intervention's bans (all its terms together) leave a layer unroutable."""
        for k, placed in enumerate(per):
            banned = {e for i, p in enumerate(placed or ()) if p is not None
                      and self.interventions[k].terms[i].op.mode == "ban" for e in p[0].tolist()}
            site = part.site
            why = ban_leaves_routing(site.n_experts, site.top_k, banned, *router_groups(site.router)) if banned else None
            if why:
                raise InterventionError(f"route:ban on layer {part.layer}: {why}; ban in fewer layers (@LAYERS) or "
                                        "use route:bias:β")

    @property
    def needs_call_info(self) -> bool:
        """Whether the hooks need the batch shape / real-token mask of each forward call."""
        return self.needs_stats or self.scoped or not self.uniform

    def set_lengths(self, lengths: Sequence[int] | None) -> None:
        self._pending_lengths = None if lengths is None else [int(n) for n in lengths]

    def set_continuations(self, lengths: Sequence[int] | None) -> None:
        """The next call's rows are log-likelihood rows scoring continuations of these many tokens."""
        self._pending_conts = None if lengths is None else [int(n) for n in lengths]

    def set_prompt_length(self, length: int | Sequence[int] | None) -> None:
        """Positions from ``length`` on (absolute, per row if a list) are generated, until changed."""
        self.prompt_length = None if length is None else (int(length) if isinstance(length, int) else [int(n) for n in length])

    # called by the model pre-hook at the start of every forward
    def begin_call(self, batch: int, seq: int, attention_mask: torch.Tensor | None, offset: int = 0) -> None:
        self.shape = (batch, seq)
        self.offset = int(offset)
        self._mask_on, self._where = {}, {}
        lengths, self._pending_lengths = self._pending_lengths, None
        conts, self._pending_conts = self._pending_conts, None
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[0] == batch:
            self.mask = attention_mask[:, -seq:].bool()  # left-padded prompt, or the new tokens when decoding
        elif lengths is not None and len(lengths) == batch:
            self.mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
        else:
            self.mask = None  # every position is a real token
        if conts is not None and len(conts) == batch:
            n = torch.tensor(lengths if lengths is not None and len(lengths) == batch else [seq] * batch)
            self.starts = (n - torch.tensor(conts) + 1).clamp(min=0) + self.offset
        elif self.prompt_length is not None:
            p = self.prompt_length
            self.starts = torch.tensor([p] * batch if isinstance(p, int) else p)
        else:
            self.starts = None
        if self.rows is not None and len(self.rows) != batch:
            raise InterventionError(f"rows names {len(self.rows)} rows but the forward call has a batch of {batch}")

    def _mask(self, device) -> torch.Tensor | None:
        if self.mask is None:
            return None
        if device not in self._mask_on:
            self._mask_on[device] = self.mask.to(device)
        return self._mask_on[device]

    def where(self, scope: str, device) -> torch.Tensor | None:
        """``[B, T]`` positions the scope covers in this call (None: every position)."""
        if scope == "all":
            return None
        key = (scope, device)
        if key not in self._where:
            if self.starts is None or self.shape is None:
                raise InterventionError(f"scope={scope} needs each row's prompt length: use the lape model, or call "
                                        "session.set_continuations / set_prompt_length before the forward")
            b, t = self.shape
            pos = torch.arange(t) + self.offset
            start = self.starts[:, None]
            w = {"prompt": pos[None, :] < start, "generation": pos[None, :] >= start,
                 "last": pos[None, :] >= start - 1}[scope]
            if self.mask is not None:
                w = w & self.mask
            self._where[key] = w.to(device)
        return self._where[key]

    def _vals(self, layer, k: int, i: int, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (layer, k, i, dtype)
        if key not in self._cast:
            self._cast[key] = v.to(dtype)
        return self._cast[key]

    def apply(self, layer, a: torch.Tensor) -> torch.Tensor:
        """Edit ``a`` in place: the output of the site ``layer`` (a layer index for a neuron site, or a
        ``(kind, layer)`` key); returns it."""
        per = self._placed.get(layer if isinstance(layer, tuple) else ("neuron", layer))
        if self.paused or not per or all(p is None for p in per):
            return a
        if self.uniform and not self.needs_stats and not self.scoped:
            for i, placed in enumerate(per[0]):
                if placed is not None:
                    j, v = placed
                    _apply(a, self.interventions[0].terms[i].op, j,
                           None if v is None else self._vals(layer, 0, i, v, a.dtype), None)
            return a
        a3 = self._as3d(a)
        mask = self._mask(a3.device)
        for k, rows in (((0, slice(None)),) if self.uniform else
                        ((k, slice(b, b + 1)) for b, k in enumerate(self.rows) if k >= 0)):
            if per[k] is None:
                continue
            comp = self.interventions[k]
            where = self.where(comp.scope, a3.device)
            part, m = a3[rows], None if mask is None else mask[rows]
            w = None if where is None else where[rows]
            for i, placed in enumerate(per[k]):
                if placed is None:
                    continue
                j, v = placed
                op = comp.terms[i].op
                v = None if v is None else self._vals(layer, k, i, v, a.dtype)
                stat = _row_statistics(part, m, op.statistic) if op.statistic else None
                if w is None:
                    _apply(part, op, j, v, stat)
                else:
                    old = part[..., j]
                    new = old.clone()
                    _apply(new, op, None, v, stat)
                    part[..., j] = torch.where(w[:, :, None], new, old)
        return a

    def apply_routed(self, key: tuple, site: ExpertSite, a: torch.Tensor, token: torch.Tensor,
                     expert: torch.Tensor) -> torch.Tensor:
        """The routed experts' activation ``a`` ``[R, d_e]`` of one call, row r being flattened token
        ``token[r]`` (= b·T + t) routed to expert ``expert[r]``: a new tensor where, for every term of the
        intervention of row b (in its scope at (b, t)), the neurons j of expert e it selects are edited as a
        dense ``a[b,t,e·d_e+j]`` would be (module docstring). Vectorised with per-expert tables ``[E, d_e]``
        (selected, value) indexed by the rows' experts."""
        per = self._placed.get(key)
        if self.paused or not per or all(p is None for p in per):
            return a
        shape, a = a.shape, a.reshape(-1, site.d_expert)
        token, expert = token.to(a.device), expert.to(a.device)
        for k, comp in enumerate(self.interventions):
            if per[k] is None or (k > 0 and self.uniform):
                continue
            on = self._rows_on(k, comp.scope, token, a.device)
            for i, placed in enumerate(per[k]):
                if placed is None:
                    continue
                sel, val = self._tables(key, k, i, placed, site, a.dtype)
                s = sel[expert]
                if on is not None:
                    s = s & on[:, None]
                a = _apply_where(a, comp.terms[i].op, s, None if val is None else val[expert])
        return a.reshape(shape)

    def apply_route(self, key: tuple, z: torch.Tensor, choice: bool = False) -> torch.Tensor:
        """Router logits ``z`` ``[N, E]`` of one call (row n = flattened token b·T + t) with every router term of
        the intervention of row b, in its scope at (b, t), applied in order: ``ban`` → −∞, ``bias:β`` → z + β
        on the term's experts (module docstring). ``choice``: ``z`` is a router's own choice scores (derived from
        the logits, plus its correction bias), where only bans apply. A new tensor; ``z`` itself is left as it is."""
        per = self._placed.get(key)
        if self.paused or not per or all(p is None for p in per):
            return z
        shape, z = z.shape, z.reshape(-1, z.shape[-1])
        token = None
        for k, comp in enumerate(self.interventions):
            if per[k] is None or (k > 0 and self.uniform):
                continue
            on = None
            if not (self.uniform and comp.scope == "all"):
                token = torch.arange(z.shape[0], device=z.device) if token is None else token
                on = self._rows_on(k, comp.scope, token, z.device)
            for i, placed in enumerate(per[k]):
                op = comp.terms[i].op
                if placed is None or (choice and op.mode != "ban"):
                    continue
                ck = ("route", key, k, i, z.device)
                if ck not in self._cast:
                    self._cast[ck] = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device).index_fill_(
                        0, placed[0].to(z.device), True)
                sel = self._cast[ck]
                s = sel[None, :] if on is None else on[:, None] & sel[None, :]
                z = z.masked_fill(s, -math.inf) if op.mode == "ban" else torch.where(s, z + op.value, z)
        return z.reshape(shape)

    def _rows_on(self, k: int, scope: str, token: torch.Tensor, device) -> torch.Tensor | None:
        """bool ``[R]``: the rows whose token (b, t) runs intervention ``k`` (``rows[b] == k``) in ``scope``;
        None for every row."""
        if self.uniform and scope == "all":
            return None
        if self.shape is None:
            raise InterventionError("per-row interventions or a scope need the forward's batch shape (the model's "
                                    "pre-hook sets it)")
        b, t = token // self.shape[1], token % self.shape[1]
        on = torch.ones(token.shape[0], dtype=torch.bool, device=device)
        if not self.uniform:
            on &= torch.tensor(self.rows, device=device)[b] == k
        where = self.where(scope, device)
        if where is not None:
            on &= where[b, t]
        return on

    def _tables(self, key, k: int, i: int, placed, site: ExpertSite, dtype: torch.dtype):
        """(selected bool ``[E, d_e]``, values ``[E, d_e]`` in ``dtype`` or None) of term i of intervention k,
        from its flattened indices e·d_e + j."""
        ck = ("tables", key, k, i, dtype)
        if ck not in self._cast:
            j, v = placed
            sel = torch.zeros(site.d_routed, dtype=torch.bool, device=j.device)
            sel[j] = True
            val = None
            if v is not None:
                val = torch.zeros(site.d_routed, dtype=dtype, device=j.device)
                val[j] = v.to(dtype)
                val = val.view(site.n_experts, site.d_expert)
            self._cast[ck] = (sel.view(site.n_experts, site.d_expert), val)
        return self._cast[ck]

    def _as3d(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() == 3:
            return a
        if self.shape is not None and a.dim() == 2 and a.shape[0] == self.shape[0] * self.shape[1]:
            return a.view(self.shape[0], self.shape[1], a.shape[-1])  # OPT flattens [B*T, d_ff]
        if a.dim() == 2 and (self.shape is None or self.shape[0] == 1):
            return a.unsqueeze(0)
        raise InterventionError(f"cannot map an activation of shape {tuple(a.shape)} to batch rows {self.shape}")


def _row_statistics(a3: torch.Tensor, mask: torch.Tensor | None, stat: tuple[str, float]) -> torch.Tensor:
    """Per-row statistic ``[B]`` over the real tokens × all neurons of ``a3`` ``[B, T, d_ff]``."""
    kind, q = stat
    if kind == "max":
        if mask is None:
            return a3.amax(dim=(1, 2))
        return a3.masked_fill(~mask[:, :, None], -math.inf).amax(dim=(1, 2))
    out = []
    for b in range(a3.shape[0]):
        x = a3[b] if mask is None else a3[b][mask[b]]
        x = x.flatten()
        k = max(int(math.floor(q / 100.0 * x.numel())), 1)
        out.append(torch.kthvalue(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, k).values.to(a3.dtype))
    return torch.stack(out)


def _apply(a: torch.Tensor, op: Operation, j: torch.Tensor | None, v: torch.Tensor | None, stat: torch.Tensor | None) -> None:
    """In place on ``a[..., j]`` (``j=None``: every column of ``a``, already the selected neurons); ``stat``
    is ``[B]`` for a 3-D ``a`` (test-time values); a graded op multiplies the value by ``op.factor``."""
    cols = slice(None) if j is None else j
    if op.mode == "zero":
        if j is None:
            a.zero_()
        else:
            a.index_fill_(-1, j, 0.0)
        return
    if op.mode == "scale":
        a[..., cols] = a[..., cols] * op.value
        return
    if stat is not None:
        val = stat.view(-1, *([1] * (a.dim() - 1)))  # [B, 1, 1]
    elif v is not None:
        val = v
    else:
        val = op.value
    if op.factor != 1.0:
        val = val * op.factor
    if op.mode == "set":
        if isinstance(val, float) and j is not None:
            a.index_fill_(-1, j, val)
        else:
            a[..., cols] = val  # [k] per neuron, or [B, 1, 1] per row
    else:  # add
        a[..., cols] = a[..., cols] + val


def _apply_where(a: torch.Tensor, op: Operation, s: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """Out of place: ``a`` ``[R, d]`` with the entries where ``s`` (bool ``[R, d]``) edited by ``op`` (``v``:
    per-entry values ``[R, d]`` from the mask, else the number ``op.value``), as :func:`_apply` does::

        zero  0      set  v      scale  op.value · a      add  a + v      (v multiplied by a graded op's factor)"""
    if op.mode == "zero":
        return a.masked_fill(s, 0.0)
    if op.mode == "scale":
        return torch.where(s, a * op.value, a)
    val = v if v is not None else op.value
    if op.factor != 1.0:
        val = val * op.factor
    if op.mode == "set":
        return a.masked_fill(s, val) if isinstance(val, float) else torch.where(s, val, a)
    return torch.where(s, a + val, a)


@contextmanager
def intervene(
    model: nn.Module,
    interventions: Intervention | Sequence[Intervention | None] | None,
    rows: Sequence[int] | torch.Tensor | None = None,
    sites: list[Site] | None = None,
) -> Iterator[Session | None]:
    """Apply ``interventions`` inside the ``with`` block; the hooks are removed on exit, whatever happens.

    ``interventions``: one :class:`Intervention` or :class:`Composite` for every row, or a list of them with
    ``rows`` giving each batch row's index into the list (``-1``: row untouched). ``None`` (or an empty list)
    installs nothing. A scope other than ``all`` needs the session told where generation starts
    (:meth:`Session.set_continuations` / :meth:`Session.set_prompt_length`; the ``lape`` model does it).
    """
    if interventions is None or isinstance(interventions, (Intervention, Composite)):
        ivs = [] if interventions is None else [interventions]
    else:
        ivs = list(interventions)
    if rows is None and len(ivs) > 1:
        raise InterventionError("several interventions need rows= (each batch row's index into the list)")
    if isinstance(rows, torch.Tensor):
        rows = rows.tolist()
    if not any(t.neurons for iv in ivs if iv is not None for t in as_composite(iv).terms):
        yield None
        return
    terms = [t for iv in ivs if iv is not None for t in as_composite(iv).terms]
    kinds = {t.site for t in terms}
    found = []
    if kinds & {"neuron", "route"}:
        found = list(sites) if sites is not None else find_neuron_sites(model)
    hooked = []
    if "neuron" in kinds:
        hooked += expert_parts(found) if is_expert_sites(found) else found
    if "route" in kinds:
        if not is_expert_sites(found):
            raise InterventionError("route: terms act on a mixture-of-experts router, and this model's FFNs are dense")
        hooked += [RouterPart(s.layer, s) for s in found if s.n_experts]
    if "residual" in kinds:
        hooked += residual_sites(model)
    sites = hooked
    session = Session(sites, ivs, rows)
    handles = []
    try:
        if session.needs_call_info:
            handles.append(model.register_forward_pre_hook(_call_hook(session), with_kwargs=True))
        for site in sites:
            key = (_kind(site), site.layer)
            if not any(p is not None for p in session._placed[key]):
                continue
            if key[0] == "routed":
                handles += _routed_hooks(session, key, site.site)
            elif key[0] == "route":
                handles.append(_Restore(edit_router(site.site, lambda z, choice, key=key: session.apply_route(key, z, choice))))
            else:
                handles.append(site.module.register_forward_hook(_site_hook(session, key)))
        yield session
    finally:
        for h in handles:
            h.remove()


def _call_hook(session: Session):
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            session.begin_call(int(ids.shape[0]), int(ids.shape[1]), kwargs.get("attention_mask"), _offset(kwargs))
        return None

    return hook


def _offset(kwargs) -> int:
    """Tokens already in the KV cache before this call (0 for a full forward)."""
    pos = kwargs.get("cache_position")
    if isinstance(pos, torch.Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])
    for name in ("past_key_values", "cache"):  # transformers 4.x / 5.x spell the KV cache differently
        past = kwargs.get(name)
        if past is not None and hasattr(past, "get_seq_length"):
            return int(past.get_seq_length())
    return 0


class _Restore:
    def __init__(self, restore):
        self.remove = restore


def _routed_hooks(session: Session, key: tuple, site: ExpertSite) -> list:
    """A routed layer's hooks: the row plan around the experts' forward (:class:`~lapeval.moe.RowPlan`) and the
    edit of each call's rows on its non-linearity's output (GPT-OSS: inside ``_apply_gate``,
    :func:`~lapeval.moe.edit_gate`)."""
    plan = RowPlan(site)

    def edit(a):
        rows = plan.take(a.reshape(-1, site.d_expert).shape[0])
        return a if rows is None else session.apply_routed(key, site, a, *rows)

    handles = [site.experts.register_forward_pre_hook(plan.begin, with_kwargs=True)]
    try:
        handles.append(site.experts.register_forward_hook(plan.end))
        if site.act is not None:
            handles.append(site.act.register_forward_hook(lambda module, args, out: edit(out)))
        else:
            handles.append(_Restore(edit_gate(site.experts, edit)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _site_hook(session: Session, key: tuple):
    if key[0] == "residual":
        def hook(module, args, output):  # edited in place: a decoder layer may return (hidden, ...)
            session.apply(key, output[0] if isinstance(output, tuple) else output)
            return None

        return hook

    def hook(module, args, output):
        return session.apply(key, output)

    return hook
