"""Neurons of mixture-of-experts FFNs (docs/method §12): where they live and how LAPE counts them.

A routed FFN replaces the dense FFN by E experts, each a gated MLP of width d_e, and a router choosing the
top k of them per token; some families add always-on shared experts (dense FFNs). A neuron is
(layer, expert, j); one layer's neurons are flattened **expert-major**:

    index(e, j) = e · d_e + j                      routed expert e ∈ [0, E), j ∈ [0, d_e)
    index(s, j) = E · d_e + offset_s + j           shared FFN s, after every routed expert, in finder order

so ``d_ff = E · d_e + Σ shared widths``. A layer of a mixed model whose FFN is dense (DeepSeek-V3's first
``first_k_dense_replace`` layers, Qwen3-MoE's ``mlp_only_layers``) is a site with no routed experts (E = 0)
whose dense FFN is its one always-on part.

In transformers 5.x the experts of a layer are one fused module holding 3-D parameters for all experts
(``gate_up_proj [E, 2·d_e, hidden]``, ``down_proj [E, hidden, d_e]``, or both transposed) and a
non-linearity ``act_fn``; its forward receives the flattened tokens ``[N, hidden]`` and the router's choice
``top_k_index [N, k]`` and evaluates ``act_fn(gate)`` on rows that are (token, expert) pairs, in an order set
by the experts implementation (``config._experts_implementation``). :func:`expert_rows` gives that order; a
forward pre-hook on the experts module captures ``top_k_index`` and a forward hook on ``act_fn`` consumes the
rows call by call (:class:`ExpertActivationCounter`). Everything is found from module structure, never from
the model's name.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .sites import (
    Site,
    UnsupportedModelError,
    _is_nonlinearity,
    _site_in,
    decoder_layers,
    find_sites,
    hidden_size_of,
    holds_fused_experts,
    module_at,
)

IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")  # the experts implementations whose row order is known
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k")


@dataclass
class SharedFFN:
    """An always-on dense FFN of a routed layer (a shared expert, or a mixed model's dense layer):
    ``module``'s forward output is its activation ``[..., width]``."""

    name: str  # path of the non-linearity, e.g. "model.layers.1.mlp.shared_expert.act_fn"
    module: nn.Module
    width: int
    container: nn.Module = field(repr=False)
    attr: str = ""


@dataclass
class ExpertSite:
    """One layer's routed FFN: E experts of width d_e chosen top_k at a time, plus always-on shared FFNs.

    ``act`` is the experts' non-linearity; None where the family calls no separate module (GPT-OSS: its
    activation is written inside ``experts._apply_gate``, observed by :func:`_probe_gate`)."""

    layer: int
    name: str  # path of the block holding router and experts, e.g. "model.layers.1.mlp"
    block: nn.Module = field(repr=False)
    experts_name: str = ""
    experts: nn.Module | None = field(default=None, repr=False)
    router_name: str = ""
    router: nn.Module | None = field(default=None, repr=False)
    act_name: str = ""
    act: nn.Module | None = field(default=None, repr=False)
    n_experts: int = 0
    d_expert: int = 0
    top_k: int = 0
    transposed: bool = False  # expert weights stored [E, in, out] instead of [E, out, in]
    gated: bool = True
    shared: list[SharedFFN] = field(default_factory=list)

    @property
    def d_routed(self) -> int:
        """E · d_e: the routed experts' neurons, indices [0, E·d_e)."""
        return self.n_experts * self.d_expert

    @property
    def d_ff(self) -> int:
        """E · d_e + the shared FFNs' widths: the layer's neuron count."""
        return self.d_routed + sum(s.width for s in self.shared)

    @property
    def shared_offsets(self) -> list[int]:
        """Where each shared FFN's neurons start in the flattened layer (after the routed ones)."""
        offsets, at = [], self.d_routed
        for s in self.shared:
            offsets.append(at)
            at += s.width
        return offsets

    @property
    def device(self) -> torch.device:
        return next(self.block.parameters()).device


# ---- structure -----------------------------------------------------------------------------------
def _expert_layout(experts: nn.Module, hidden: int) -> tuple[int, int, bool, bool] | None:
    """(E, d_e, transposed, gated) of a fused experts module, from its direct 3-D parameters alone.

    Read each weight [E, a, b] as (in, out) = (b, a), or (a, b) when transposed. The down projection maps
    d_e → hidden; the rest map hidden → 2·d_e (fused gate_up), hidden → d_e twice (gate and up apart) or
    hidden → d_e once (ungated). Where both readings fit, the module's own ``is_transposed`` decides."""
    ws = [p for p in experts.parameters(recurse=False) if p.dim() == 3]
    if len(ws) not in (2, 3) or len({int(w.shape[0]) for w in ws}) != 1:
        return None
    n = int(ws[0].shape[0])
    fits = set()
    for transposed in (False, True):
        io = [(int(w.shape[1]), int(w.shape[2])) if transposed else (int(w.shape[2]), int(w.shape[1])) for w in ws]
        for k, (d, out) in enumerate(io):
            ups = [s for j, s in enumerate(io) if j != k]
            if out != hidden or any(i != hidden for i, _ in ups):
                continue
            outs = sorted(o for _, o in ups)
            if outs in ([2 * d], [d, d], [d]):
                fits.add((n, d, transposed, outs != [d]))
    if len(fits) > 1 and isinstance(getattr(experts, "is_transposed", None), bool):
        fits = {f for f in fits if f[2] == experts.is_transposed}
    return fits.pop() if len(fits) == 1 else None


def _router_of(block: nn.Module, skip: nn.Module, n_experts: int, hidden: int) -> tuple[str, nn.Module] | None:
    """The child of ``block`` (other than the experts) holding a direct 2-D parameter [E, hidden]."""
    hits = [(n, c) for n, c in block.named_children() if c is not skip and any(
        p.dim() == 2 and tuple(p.shape) == (n_experts, hidden) for p in c.parameters(recurse=False))]
    return hits[0] if len(hits) == 1 else None


def _top_k_of(router: nn.Module, model: nn.Module) -> int | None:
    """The router's ``top_k`` attribute, else the config's experts-per-token count."""
    k = getattr(router, "top_k", None)
    if isinstance(k, int) and k > 0:
        return k
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in _TOP_K_KEYS:
        if isinstance(getattr(cfg, key, None), int) and getattr(cfg, key) > 0:
            return int(getattr(cfg, key))
    return None


def _shared_in(block: nn.Module, skip: tuple[nn.Module, ...], hidden: int, prefix: str) -> list[SharedFFN]:
    """Dense FFNs (the dense finder's rule, :func:`lapeval.sites._site_in`) among ``block``'s other children."""
    found = []
    for child_name, child in block.named_children():
        if any(child is s for s in skip):
            continue
        for path, container in child.named_modules():
            if (hit := _site_in(container, hidden)) is not None:
                attr, act, width, _ = hit
                name = ".".join(p for p in (prefix, child_name, path, attr) if p)
                found.append(SharedFFN(name, act, width, container, attr))
    return found


def _routed_site(layer: int, block: nn.Module, prefix: str, hidden: int, model: nn.Module) -> ExpertSite | None:
    """If ``block`` holds a fused experts module and its router, the layer's site."""
    for experts_name, experts in block.named_children():
        if (layout := _expert_layout(experts, hidden)) is None:
            continue
        n, d, transposed, gated = layout
        if (router := _router_of(block, experts, n, hidden)) is None:
            continue
        acts = [(a, m) for a, m in experts.named_children() if _is_nonlinearity(m)]
        if len(acts) == 1:
            act_name, act = f"{prefix}.{experts_name}.{acts[0][0]}", acts[0][1]
        elif not acts and gated and callable(getattr(experts, "_apply_gate", None)) and hasattr(
                experts, "is_concatenated"):
            act_name, act = f"{prefix}.{experts_name}._apply_gate", None
        else:
            raise UnsupportedModelError(
                f"{type(model).__name__} layer {layer}: the experts module {prefix}.{experts_name} has no single "
                "non-linearity module (act_fn) nor a gate function (_apply_gate) to observe")
        top_k = _top_k_of(router[1], model)
        if top_k is None:
            raise UnsupportedModelError(f"{type(model).__name__} layer {layer}: the router {prefix}.{router[0]} "
                                        f"names no top_k and the config no {' / '.join(_TOP_K_KEYS)}")
        shared = _shared_in(block, (experts, router[1]), hidden, prefix)
        return ExpertSite(layer, prefix, block, f"{prefix}.{experts_name}", experts, f"{prefix}.{router[0]}",
                          router[1], act_name, act, n, d, top_k, transposed, gated, shared)
    return None


def _modules_outside_attention(layer: nn.Module):
    for path, module in layer.named_modules():
        if not re.search(r"attn|attention", path, re.IGNORECASE):
            yield path, module


def find_expert_sites(model: nn.Module, untie: bool = True, block: str | None = None) -> list[ExpertSite]:
    """Every decoder layer's routed FFN, in layer order (a dense layer of a mixed model: E = 0 and its FFN
    as the one always-on part). A model with no routed FFN at all raises a one-line UnsupportedModelError:
    dense models go through :func:`lapeval.sites.find_sites`.

    ``block``: where the structural search looks instead of the whole decoder layer — a module path with
    ``{layer}`` naming the block that holds the router and the experts (``model.layers.{layer}.mlp``), the
    ``--site`` of a routed model; a named block holding neither a routed nor a dense FFN is a one-line error."""
    layers_name, layers = decoder_layers(model)
    hidden = hidden_size_of(model)
    modules = dict(model.named_modules()) if block is not None else None
    found: list[ExpertSite] = []
    for i, layer in enumerate(layers):
        base = f"{layers_name}.{i}"
        if block is not None:
            base, named = module_at(model, block, i, "model.layers.{layer}.mlp (on a routed model: the block holding "
                                    "router and experts)", modules)
            places = [("", named)]
        else:
            places = list(_modules_outside_attention(layer))
        site = next((s for path, part in places
                     if (s := _routed_site(i, part, ".".join(p for p in (base, path) if p), hidden, model))), None)
        if site is None and block is not None and holds_fused_experts(named):
            raise UnsupportedModelError(f"site={block!r}: {base} holds fused experts but no router beside them (a "
                                        "child with a weight [experts, hidden]): name the block holding both")
        if site is None:
            dense = next(((path, c, hit) for path, c in places if (hit := _site_in(c, hidden)) is not None), None)
            if dense is None:
                raise UnsupportedModelError(f"{type(model).__name__} layer {i}: neither a routed FFN nor a dense "
                                            "FFN found")
            path, container, (attr, act, width, _) = dense
            prefix = ".".join(p for p in (base, path) if p)
            site = ExpertSite(i, prefix, container, shared=[SharedFFN(f"{prefix}.{attr}", act, width, container, attr)])
        found.append(site)
    if not any(s.n_experts for s in found):
        raise UnsupportedModelError(
            f"{type(model).__name__}: no routed FFN found (looked in each decoder layer for a module holding a "
            "router with weight [E, hidden] and an experts module with 3-D weights [E, ·, ·]); dense models use "
            "find_sites")
    if untie:
        _untie(found)
    return found


def _untie(found: list[ExpertSite]) -> None:
    """A non-linearity module met twice (shared by layers or FFNs) gets one copy per use (its own hook)."""
    seen: set[int] = set()
    for site in found:
        if site.act is not None:
            if id(site.act) in seen:
                site.act = copy.deepcopy(site.act)
                setattr(site.experts, site.act_name.rpartition(".")[2], site.act)
            seen.add(id(site.act))
        for s in site.shared:
            if id(s.module) in seen:
                s.module = copy.deepcopy(s.module)
                setattr(s.container, s.attr, s.module)
            seen.add(id(s.module))


def is_routed(model: nn.Module) -> bool:
    """Whether a decoder layer of ``model`` holds fused experts (then its neurons are one :class:`ExpertSite` per layer)."""
    return any(holds_fused_experts(layer) for layer in decoder_layers(model)[1])


def find_neuron_sites(model: nn.Module, site: str | None = None) -> list[Site] | list[ExpertSite]:
    """The sites identification counts: the user's ``site`` pattern or the dense finder's
    (:func:`lapeval.sites.find_sites`) for dense models, :func:`find_expert_sites` when the decoder layers hold
    routed FFNs — with ``site`` naming the block that holds each layer's router and experts."""
    if not is_routed(model):
        return find_sites(model, site=site)
    return find_expert_sites(model, block=site or None)


def is_expert_sites(sites) -> bool:
    return bool(sites) and isinstance(sites[0], ExpertSite)


FLATTENING = ("index(e, j) = e·d_expert + j for routed expert e; shared FFN s at experts·d_expert + offset_s + j "
              "(after every routed expert, in finder order); a layer narrower than d_ff is padded at the end with "
              "neurons that never fire and are never selected")


def moe_meta(sites: list[ExpertSite]) -> dict:
    """What a STATS file and its masks record of a routed model's neuron layout.

    Every layer's neurons are flattened as :data:`FLATTENING` and **padded to the widest layer**
    d_ff = max_l d_ff(l): layers of one model may differ (DeepSeek-V3's first dense layers have E = 0 and only
    their dense FFN), and a rectangular [n_layers, d_ff] keeps selection and the mask format unchanged. A
    padded neuron (index ≥ ``layer_d_ff[l]``) never fires and selection excludes it. ``experts``,
    ``d_expert``, ``top_k`` are those of the routed layers (one value: a model whose routed layers differ is
    refused); ``layer_experts[l]`` is E of layer l (0 for a dense layer), ``shared[l]`` the always-on widths."""
    routed = [s for s in sites if s.n_experts]
    shapes = {(s.n_experts, s.d_expert, s.top_k) for s in routed}
    if len(shapes) != 1:
        raise UnsupportedModelError(f"routed layers differ in (experts, d_expert, top_k): {sorted(shapes)}; lapeval "
                                    "records one expert layout per model")
    n, d, k = shapes.pop()
    first = routed[0]
    pattern = lambda name: name.replace(f".{first.layer}.", ".{layer}.", 1)
    return {
        "experts": n, "d_expert": d, "top_k": k,
        "layer_experts": [s.n_experts for s in sites],
        "shared": [[f.width for f in s.shared] for s in sites],
        "layer_d_ff": [s.d_ff for s in sites],
        "flattening": FLATTENING,
        "experts_module": pattern(first.experts_name),
        "router": pattern(first.router_name),
        "implementation": implementation_of(first.experts),
    }


# ---- row order -----------------------------------------------------------------------------------
def implementation_of(experts: nn.Module) -> str:
    """The experts implementation the module's forward dispatches to (None in the config: the eager forward)."""
    return getattr(getattr(experts, "config", None), "_experts_implementation", None) or "eager"


def expert_rows(implementation: str, top_k_index: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [S], expert [S]) of every row the experts' non-linearity sees in one forward, in the order the
    rows arrive, all of that forward's calls one after the other. ``top_k_index`` is [N, k] (N flattened
    tokens); pair p = n·k + s is token n's s-th choice.

    * ``eager``: one call per expert hit, experts ascending; inside a call the rows are
      ``torch.where(one_hot(top_k_index)[:, :, e].T)``, i.e. ordered by top-k slot, then token.
    * ``batched_mm``: one call over all pairs, token-major: row p is pair p.
    * ``grouped_mm``: one call over the pairs sorted by expert with ``torch.sort(top_k_index.reshape(-1))``
      (the same call, hence the same permutation, as transformers makes): row r is pair perm[r].
    """
    N, k = top_k_index.shape
    flat = top_k_index.reshape(-1)
    pair = torch.arange(N * k, device=flat.device)
    if implementation == "batched_mm":
        order = pair
    elif implementation == "grouped_mm":
        order = torch.sort(flat)[1]
    elif implementation == "eager":
        keep = flat < n_experts  # expert-parallel sentinels are skipped by the eager loop
        slot, token = pair % k, pair // k
        order = torch.argsort(flat * (k * N) + slot * N + token)[: int(keep.sum())]
    else:
        raise UnsupportedModelError(
            f"experts implementation {implementation!r}: lapeval knows the row order of "
            f"{', '.join(IMPLEMENTATIONS)} only; load the model with experts_implementation='grouped_mm'")
    return order // k, flat[order]


def _set_instance_attr(module: nn.Module, name: str, value) -> Callable[[], object]:
    """Set ``module.<name>`` on the instance; returns the function that puts back what was there (an accelerate
    hook's wrapper, say) or removes it."""
    had = name in module.__dict__
    before = module.__dict__.get(name)
    module.__dict__[name] = value

    def restore():
        if had:
            module.__dict__[name] = before
        else:
            module.__dict__.pop(name, None)

    return restore


def _probe_gate(experts: nn.Module, observe: Callable[[torch.Tensor], None]) -> Callable[[], object]:
    """For experts with no non-linearity module (GPT-OSS): wrap the instance's ``_apply_gate(gate_up)`` so that
    ``observe(a)`` sees the neurons' activation a = min(g, limit) · σ(α · min(g, limit)), the factor before the
    product with (up + 1), computed from the gate half g of its input (``gate_up[..., ::2]`` when gate and up
    are interleaved, ``chunk(2)[0]`` when concatenated) before the original runs. a > 0 exactly where g > 0
    (limit > 0). Returns the function that restores the class's method."""
    original = experts._apply_gate
    interleaved = not experts.is_concatenated

    def apply_gate(gate_up):
        g = (gate_up[..., ::2] if interleaved else gate_up.chunk(2, dim=-1)[0]).clamp(max=experts.limit)
        observe(g * torch.sigmoid(g * experts.alpha))
        return original(gate_up)

    return _set_instance_attr(experts, "_apply_gate", apply_gate)


def edit_gate(experts: nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
    """For experts with no non-linearity module (GPT-OSS): replace the instance's ``_apply_gate(gate_up)`` by
    the same arithmetic with ``edit`` applied to the neurons' activation in between::

        g = min(gate, limit),  u = clamp(up, -limit, limit),  a = g · σ(α · g),  out = (u + 1) · edit(a)

    where (gate, up) are the columns ``0::2`` / ``1::2`` of ``gate_up`` (interleaved) or its two halves
    (concatenated). With ``edit`` the identity this is the class's method operation for operation. Returns
    the function that restores the class's method."""
    interleaved = not experts.is_concatenated

    def apply_gate(gate_up):
        gate, up = (gate_up[..., ::2], gate_up[..., 1::2]) if interleaved else gate_up.chunk(2, dim=-1)
        gate = gate.clamp(min=None, max=experts.limit)
        up = up.clamp(min=-experts.limit, max=experts.limit)
        glu = edit(gate * torch.sigmoid(gate * experts.alpha))
        return (up + 1) * glu

    return _set_instance_attr(experts, "_apply_gate", apply_gate)


_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}


def edit_router(site: ExpertSite, edit: Callable[[torch.Tensor, bool], torch.Tensor]) -> Callable[[], object]:
    """Wrap the router's forward so that ``edit`` rewrites, during it, the router logits z ``[N, E]`` — the
    output of its one linear map onto the E experts (``F.linear(x, W_router[, b])``), whatever the router does
    with them next (softmax then top-k: Qwen-MoE, Mixtral, OLMoE; top-k then softmax: GPT-OSS; sigmoid, a
    correction bias and grouped top-k: DeepSeek-V3) — as ``edit(z, False)``; and, where the router adds a
    per-expert bias of its own to scores derived from z before choosing (DeepSeek-V3's
    ``e_score_correction_bias``: choice = σ(z) + b), that sum as ``edit(choice, True)``, so that an expert
    banned with z = −∞ (σ(z) = 0) cannot come back through b. Found by a torch function mode that is active
    only inside the router's forward; a router whose forward makes no such linear map is refused. Returns the
    function that restores the forward."""
    router, n = site.router, site.n_experts
    original = router.forward
    biases = [t for t in (*router.parameters(recurse=False), *router.buffers(recurse=False))
              if t.dim() == 1 and t.shape[0] == n]

    class _Edit(torch.overrides.TorchFunctionMode):
        seen = False

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not isinstance(out, torch.Tensor) or not out.dim() or out.shape[-1] != n:
                return out
            if not self.seen and func is torch.nn.functional.linear:
                self.seen = True
                return edit(out, False)
            if self.seen and func in _ADDS and any(a is b for a in args for b in biases):
                return edit(out, True)
            return out

    def forward(*args, **kwargs):
        mode = _Edit()
        with mode:
            out = original(*args, **kwargs)
        if not mode.seen:
            raise UnsupportedModelError(f"{site.router_name}: its forward makes no linear map onto its {n} experts' "
                                        "logits, so route: terms cannot reach them")
        return out

    return _set_instance_attr(router, "forward", forward)


def router_groups(router: nn.Module) -> tuple[int | None, int | None]:
    """(groups, groups kept) of a router with grouped top-k (``num_group`` / ``n_group`` and ``topk_group``:
    DeepSeek-V3), else (None, None)."""
    groups = getattr(router, "num_group", getattr(router, "n_group", None))
    topk_group = getattr(router, "topk_group", None)
    return (groups, topk_group) if isinstance(groups, int) and isinstance(topk_group, int) else (None, None)


def ban_leaves_routing(n_experts: int, top_k: int, banned: set[int], groups: int | None = None,
                       topk_group: int | None = None) -> str | None:
    """Why banning ``banned`` of a layer's ``n_experts`` experts would leave a token fewer than ``top_k`` to route
    to (None when it does not): at least k must stay, and under grouped top-k (``groups`` groups, the best
    ``topk_group`` kept, :func:`router_groups`; a group scores the sum of its best two experts, so a group with
    fewer than two left scores −∞) the ``topk_group`` groups with the fewest left must still hold k of them."""
    left = n_experts - len(banned)
    if left < top_k:
        return f"banning {len(banned)} of its {n_experts} experts leaves {left}, fewer than top-k = {top_k}"
    if groups is not None and topk_group is not None and groups > 1 and n_experts % groups == 0:
        size = n_experts // groups
        counts = [sum(1 for e in range(g * size, (g + 1) * size) if e not in banned) for g in range(groups)]
        usable = sorted(c for c in counts if c >= min(2, size))
        if len(usable) < topk_group or sum(usable[:topk_group]) < top_k:
            return (f"banning experts {sorted(banned)} leaves too few groups of its grouped top-k ({groups} groups of "
                    f"{size}, top {topk_group} groups, top-k {top_k})")
    return None


class RowPlan:
    """Which (token, expert) each row of an experts module's non-linearity is, in the current forward.

    :meth:`begin` (a forward pre-hook on the experts module, ``with_kwargs=True``) reads ``top_k_index`` (the one
    integer tensor among the inputs, ``[N, k]``) and lays out the rows with :func:`expert_rows`; :meth:`take`
    hands out the next ``r`` rows' (token [r], expert [r]) call by call; :meth:`end` (a forward hook) checks
    that every planned row was seen (else the implementation bypasses the hooked non-linearity)."""

    def __init__(self, site: ExpertSite):
        self.site = site
        self.token: torch.Tensor | None = None
        self.expert: torch.Tensor | None = None
        self.top_k_index: torch.Tensor | None = None  # [N, k], N = B·T flattened tokens
        self.at = 0

    def begin(self, module, args, kwargs) -> None:
        tensors = list(args) + list(kwargs.values())
        index = next(t for t in tensors if isinstance(t, torch.Tensor) and not t.is_floating_point())
        self.top_k_index = index.reshape(-1, index.shape[-1])
        self.token, self.expert = expert_rows(implementation_of(module), self.top_k_index, self.site.n_experts)
        self.at = 0

    def take(self, r: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next ``r`` rows' (token, expert); None outside the experts' forward."""
        if self.token is None:
            return None
        at, self.at = self.at, self.at + r
        return self.token[at:at + r], self.expert[at:at + r]

    def end(self, module, args, out) -> None:
        planned, self.token = self.token, None
        if planned is not None and self.at != planned.numel():
            raise UnsupportedModelError(
                f"{self.site.experts_name}: its non-linearity saw {self.at} rows, the {implementation_of(module)!r} "
                f"row order {planned.numel()}; this experts implementation bypasses the non-linearity module, use "
                "experts_implementation='grouped_mm'")


# ---- counting ------------------------------------------------------------------------------------
_EXACT_ROWS = 1 << 24  # float32 holds every integer up to 2^24: a sum of fewer 0/1 terms is exact in any order


def _fired_per_expert(fired: torch.Tensor, expert: torch.Tensor, keep: torch.Tensor, n_experts: int) -> torch.Tensor:
    """int64 [E, d_e]: at (e, j), how many rows r with ``expert[r] == e`` and ``keep[r]`` have ``fired[r, j]``
    (bool [R, d_e]).

    One product W · fired with W [E, R] the kept rows' one-hot experts, in float32 over chunks of fewer than 2^24
    rows, so that every partial sum is an integer float32 holds exactly (also with TF32 or bf16 products: the
    factors are 0 and 1) and the result equals the integer count bit for bit. Unlike compacting the kept rows
    and ``index_add_`` of int64 (a copy of the rows, an 8-byte-per-neuron tensor, and on a GPU a host
    synchronisation for the boolean index) it reads the rows once; its cost, R · E · d_e multiply-adds, is
    E / (3 · hidden) of the experts' own (~2 % for Qwen3-30B-A3B)."""
    out = torch.zeros(n_experts, fired.shape[1], dtype=torch.int64, device=fired.device)
    step = _EXACT_ROWS - 1
    for at in range(0, fired.shape[0], step):
        f = fired[at:at + step]
        w = torch.zeros(n_experts, f.shape[0], dtype=torch.float32, device=f.device)
        w[expert[at:at + step], torch.arange(f.shape[0], device=f.device)] = keep[at:at + step].float()
        out += torch.mm(w, f.float()).to(torch.int64)
    return out


class _Handle:
    def __init__(self, remove):
        self.remove = remove


class ExpertActivationCounter:
    """Hooks on routed FFNs counting, for the tokens marked counted, what LAPE needs (docs/method §12):

    * ``over_zero[layer][d_ff]`` (int64): at e·d_e + j, the counted tokens routed to expert e whose neuron j
      is > 0 (an unrouted token counts as not activated); at a shared FFN's index, every counted token whose
      neuron is > 0;
    * ``routed[layer][E]`` (int64): the counted tokens whose top-k holds e;
    * with ``n_slots`` > 0, per-text mean activations (p_max / p_median, docs/method §3.1):
      ``slot_means[layer][slot, i]`` = (1 / n_k) Σ_{t counted in text k} a_i(t), n_k the text's counted tokens,
      where a token not routed to expert e contributes a_{e·d_e+j}(t) = 0 (float32, on the CPU).

    Before each forward, :meth:`set_batch` gives the counted-token mask ``[B, T]`` (padding False) and, per row,
    its text's slot in the first-``n_slots`` buffer (or -1). Use as a context manager: hooks are always removed
    on exit. The hooks only observe: the model's outputs are unchanged.
    """

    def __init__(self, expert_sites: list[ExpertSite], n_slots: int = 0):
        self.sites = expert_sites
        self.n_slots = n_slots
        self.over_zero = [torch.zeros(s.d_ff, dtype=torch.int64, device=s.device) for s in expert_sites]
        self.routed = [torch.zeros(s.n_experts, dtype=torch.int64, device=s.device) for s in expert_sites]
        self.slot_means = [torch.zeros(n_slots, s.d_ff, dtype=torch.float32) for s in expert_sites]
        self.slot_filled = torch.zeros(n_slots, dtype=torch.int64)
        self._counted: torch.Tensor | None = None
        self._shape: tuple[int, int] | None = None
        self._slot_ids = torch.zeros(0, dtype=torch.int64)
        self._sums: list[torch.Tensor | None] = [None] * len(expert_sites)
        self._plan = [RowPlan(site) for site in expert_sites]  # each routed layer's rows, forward by forward
        self._counted_rows: list[torch.Tensor | None] = [None] * len(expert_sites)
        self._fired: list[list[torch.Tensor]] = [[] for _ in expert_sites]  # this forward's calls: rows > 0
        self._handles: list = []

    def set_batch(self, counted: torch.Tensor, slots: torch.Tensor | None = None,
                  device: torch.device | None = None) -> None:
        """``counted``: bool ``[B, T]``, True for the tokens to count; ``slots``: int ``[B]``, each row's slot
        for the per-text means or -1 (None: no row is kept)."""
        self.flush()
        B, T = counted.shape
        self._shape = (B, T)
        self._counted = counted.reshape(-1).bool()
        dev = device or counted.device
        rows = (slots >= 0).nonzero().squeeze(1) if slots is not None and self.n_slots else torch.zeros(0, dtype=torch.int64)
        self._slot_ids = slots[rows] if rows.numel() else rows
        local = torch.full((B,), -1, dtype=torch.int64)
        local[rows] = torch.arange(rows.numel())
        self._row_local = local.to(dev, non_blocking=True)  # batch row → its place among the kept rows, or -1
        self._slot_rows = rows.to(dev, non_blocking=True)
        self._slot_mask = counted[rows].unsqueeze(-1).to(dev, non_blocking=True)  # [r, T, 1]
        self._slot_count = counted[rows].sum(1, keepdim=True).clamp(min=1).float()  # [r, 1]
        if rows.numel():
            self.slot_filled[self._slot_ids] = 1

    def _slot_sums(self, i: int, device: torch.device) -> torch.Tensor:
        """This batch's Σ_t a(t) over the counted tokens of each kept row, layer i: float32 [r, d_ff]."""
        if self._sums[i] is None:
            self._sums[i] = torch.zeros(self._slot_ids.numel(), self.sites[i].d_ff, dtype=torch.float32, device=device)
        return self._sums[i]

    def flush(self) -> None:
        """Write the finished batch's per-text means (Σ / n_k) into ``slot_means``."""
        for i, sums in enumerate(self._sums):
            if sums is not None:
                self.slot_means[i][self._slot_ids] = (sums.cpu() / self._slot_count)
        self._sums = [None] * len(self.sites)

    def _counted_on(self, device: torch.device, n: int) -> torch.Tensor:
        if self._counted is None:
            raise RuntimeError("ExpertActivationCounter: call set_batch(counted) before each forward")
        if self._counted.numel() != n:
            raise RuntimeError(f"ExpertActivationCounter: the mask counts {self._counted.numel()} tokens, the "
                               f"forward has {n}")
        return self._counted.to(device, non_blocking=True)

    def _pre_hook(self, i: int):
        """Before the experts' forward: its top_k_index (the one integer tensor among its inputs) → the row plan,
        and the routed counts."""
        site = self.sites[i]

        def hook(module, args, kwargs):
            plan = self._plan[i]
            plan.begin(module, args, kwargs)
            self._fired[i] = []  # nothing left over from a forward that raised
            top_k_index = plan.top_k_index
            self._counted_rows[i] = self._counted_on(top_k_index.device, top_k_index.shape[0])
            chosen = top_k_index[self._counted_rows[i]].reshape(-1)
            chosen = chosen[chosen < site.n_experts]
            self.routed[i] += torch.bincount(chosen, minlength=site.n_experts).to(self.routed[i].device)

        return hook

    def _post_hook(self, i: int):
        """After the experts' forward: every planned row was seen (else the implementation is not the one read),
        then the counted rows of all its calls add (a > 0) at e·d_e + j, in one product (:func:`_fired_per_expert`)."""
        site = self.sites[i]

        def hook(module, args, out):
            plan = self._plan[i]
            token, expert = plan.token, plan.expert
            parts, self._fired[i] = self._fired[i], []
            plan.end(module, args, out)
            if token is None or not parts:
                return
            fired = parts[0] if len(parts) == 1 else torch.cat(parts)
            routed = self.over_zero[i][: site.d_routed].view(site.n_experts, site.d_expert)
            routed += _fired_per_expert(fired, expert, self._counted_rows[i][token], site.n_experts).to(routed.device)

        return hook

    def _observe(self, i: int, a: torch.Tensor) -> None:
        """One call's rows a [R, d_e]: the next R rows of the plan. Keeps (a > 0) for the post-hook's count (eager
        calls the non-linearity once per expert: one count per forward, not per call) and adds the kept texts'
        rows to their per-text sums."""
        site = self.sites[i]
        rows = a.reshape(-1, site.d_expert)
        taken = self._plan[i].take(rows.shape[0])
        if taken is None:  # called outside the experts' forward: not a routed row
            return
        token, expert = taken
        self._fired[i].append(rows > 0)
        if self._slot_ids.numel():
            keep = self._counted_rows[i][token]
            local = self._row_local.to(rows.device)[token // self._shape[1]]
            kept = keep & (local >= 0)
            sums = self._slot_sums(i, rows.device)[:, : site.d_routed].view(-1, site.n_experts, site.d_expert)
            sums.index_put_((local[kept], expert[kept]), rows[kept].float(), accumulate=True)

    def _act_hook(self, i: int):
        def hook(module, inputs, out):
            self._observe(i, out)

        return hook

    def _shared_hook(self, i: int, offset: int, width: int):
        """An always-on FFN: every counted token adds (a > 0) at offset + j, and a to its text's sum."""
        def hook(module, inputs, out):
            a = out.reshape(-1, width)
            counted = self._counted_on(a.device, a.shape[0])
            self.over_zero[i][offset:offset + width] += (a[counted] > 0).sum(0).to(self.over_zero[i].device)
            if self._slot_ids.numel():
                rows = a.reshape(*self._shape, width).index_select(0, self._slot_rows.to(a.device)).float()
                self._slot_sums(i, a.device)[:, offset:offset + width] += (rows * self._slot_mask.to(a.device)).sum(1)

        return hook

    def __enter__(self):
        try:
            for i, site in enumerate(self.sites):
                if site.n_experts:
                    self._handles.append(site.experts.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
                    self._handles.append(site.experts.register_forward_hook(self._post_hook(i)))
                    if site.act is not None:
                        self._handles.append(site.act.register_forward_hook(self._act_hook(i)))
                    else:
                        self._handles.append(_Handle(_probe_gate(site.experts, lambda g, i=i: self._observe(i, g))))
                for s, offset in zip(site.shared, site.shared_offsets):
                    self._handles.append(s.module.register_forward_hook(self._shared_hook(i, offset, s.width)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._plan = [RowPlan(site) for site in self.sites]
        self._fired = [[] for _ in self.sites]
        self.flush()
        return False
