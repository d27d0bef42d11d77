"""Where each layer's FFN neurons live (Tang et al. 2024, §1.1 of docs/method).

A neuron is one coordinate j of a layer's FFN intermediate activation. Its activation is the output of the
MLP non-linearity, read

* before the element-wise gate product in gated MLPs: ``a = act(W_gate x)`` in
  ``down(act(W_gate x) ⊙ W_up x)`` (Llama, Mistral, Qwen2/3, Gemma2/3, Phi3 with a fused ``gate_up``);
* before the second projection in plain MLPs: ``a = act(W_1 x)`` in ``W_2 act(W_1 x)`` (GPT-2, BLOOM,
  GPT-NeoX, OPT).

The site is found from module structure alone, never from the model's name: in each decoder layer, the
module that holds an up projection (hidden → d_ff, or hidden → 2·d_ff when fused), a down projection
(d_ff → hidden) and one parameter-free non-linearity module. The non-linearity's forward output is the
activation tensor ``[..., d_ff]``. A non-linearity module shared by several layers is untied (one copy per
layer) so that every layer has its own hook point.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LapevalError

_ACT_NAME = re.compile(r"gelu|relu|silu|swish|swiglu|geglu|mish|tanh|sigmoid|softplus|act", re.IGNORECASE)
_NOT_ACT = (nn.Dropout, nn.Identity, nn.LayerNorm, nn.Embedding)


@dataclass
class Site:
    """One layer's neuron site: ``module``'s forward output is that layer's activation ``[..., d_ff]``."""

    layer: int
    name: str  # module path inside the model, e.g. "model.layers.3.mlp.act_fn"
    module: nn.Module
    d_ff: int
    gated: bool
    container: nn.Module = field(repr=False)  # the FFN holding the non-linearity as attribute ``attr``
    attr: str = ""

    @property
    def device(self) -> torch.device:
        """Where this layer's tensors sit (differs per layer under ``device_map``)."""
        return next(self.container.parameters()).device


class UnsupportedModelError(LapevalError, ValueError):
    pass


def _proj_shape(m: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear map: nn.Linear or GPT-2's transposed Conv1D."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if isinstance(m, nn.Linear) or hasattr(m, "in_features"):
        return int(m.in_features), int(m.out_features)
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # weight is [in, out]
        return int(w.shape[0]), int(w.shape[1])
    return None


def _is_nonlinearity(m: nn.Module) -> bool:
    if isinstance(m, _NOT_ACT) or any(True for _ in m.parameters()) or len(list(m.children())) > 1:
        return False
    return bool(_ACT_NAME.search(type(m).__name__)) or type(m).__module__.startswith(
        ("torch.nn.modules.activation", "transformers.activations")
    )


def _site_in(container: nn.Module, hidden: int) -> tuple[str, nn.Module, int, bool] | None:
    """If ``container`` is an FFN (up proj, down proj, one non-linearity child), its (attr, act, d_ff, gated)."""
    projs = {n: s for n, c in container.named_children() if (s := _proj_shape(c))}
    acts = [(n, c) for n, c in container.named_children() if _is_nonlinearity(c)]
    if len(projs) < 2 or len(acts) != 1:
        return None
    for down, (d_ff, out) in projs.items():
        ups = [s for n, s in projs.items() if n != down and s[0] == hidden]
        if out != hidden or d_ff == hidden or not ups:
            continue
        if all(out == d_ff for _, out in ups) and len(ups) in (1, 2):
            return acts[0][0], acts[0][1], d_ff, len(ups) == 2
        if len(ups) == 1 and ups[0][1] == 2 * d_ff:  # fused gate_up projection
            return acts[0][0], acts[0][1], d_ff, True
    return None


def _text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _config_int(model: nn.Module, keys: tuple[str, ...], what: str) -> int:
    cfg = _text_config(model)
    for key in keys:
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise UnsupportedModelError(f"{type(model).__name__}: config names no {what} ({' / '.join(keys)})")


def n_layers_of(model: nn.Module) -> int:
    return _config_int(model, ("num_hidden_layers", "n_layer", "num_layers"), "layer count")


def hidden_size_of(model: nn.Module) -> int:
    return _config_int(model, ("hidden_size", "n_embd", "d_model"), "hidden size")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers: the one whose length is the config's layer count."""
    n = n_layers_of(model)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and all(isinstance(x, nn.Module) for x in mod):
            if any(_proj_shape(m) for m in mod[0].modules()):
                return name, mod
    raise UnsupportedModelError(
        f"{type(model).__name__}: no list of {n} decoder layers found (looked for an nn.ModuleList of length {n})"
    )


def user_sites(model: nn.Module, pattern: str) -> list[Site]:
    """The sites a user names: ``pattern`` is a module path with ``{layer}`` (``model.layers.{layer}.mlp.act_fn``),
    for architectures the structural finder does not know. The named module's forward output is the layer's
    activation; d_ff comes from the FFN holding it (a projection from d_ff back to the hidden size), else from
    the config (``intermediate_size``, ``n_inner``, ``ffn_dim``). A path that names nothing is a one-line error
    saying what the nearest existing module holds."""
    n, hidden = n_layers_of(model), hidden_size_of(model)
    modules = dict(model.named_modules())
    sites = []
    for i in range(n):
        name, module = module_at(model, pattern, i, "model.layers.{layer}.mlp.act_fn", modules)
        container_name, _, attr = name.rpartition(".")
        container = modules.get(container_name, model)
        projs = [s for c in container.children() if (s := _proj_shape(c))]
        downs = [d for d, out in projs if out == hidden and d != hidden]
        d_ff = downs[0] if downs else _config_int(model, ("intermediate_size", "n_inner", "ffn_dim"), "FFN width")
        gated = sum(1 for d, out in projs if d == hidden and out == d_ff) == 2 or any(
            d == hidden and out == 2 * d_ff for d, out in projs)
        sites.append(Site(i, name, module, int(d_ff), gated, container, attr))
    return sites


def module_at(model: nn.Module, pattern: str, layer: int, example: str, modules: dict | None = None,
              ) -> tuple[str, nn.Module]:
    """(path, module) that ``pattern`` (a module path with ``{layer}``) names at ``layer``. A pattern without
    ``{layer}`` (``example`` shows one) or a path naming nothing is a one-line UnsupportedModelError, the latter
    saying what the nearest existing module holds. ``modules``: ``dict(model.named_modules())``, if at hand."""
    if "{layer}" not in pattern:
        raise UnsupportedModelError(f"site={pattern!r}: put {{layer}} where the layer number goes, e.g. {example}")
    modules = dict(model.named_modules()) if modules is None else modules
    name = pattern.format(layer=layer)
    if name not in modules:
        parent = name
        while parent and parent not in modules:
            parent = parent.rpartition(".")[0]
        holds = ", ".join(c for c, _ in (modules[parent].named_children() if parent in modules else model.named_children()))
        raise UnsupportedModelError(f"site={pattern!r}: layer {layer} has no module {name} "
                                    f"({parent or 'the model'} holds: {holds or 'nothing'})")
    return name, modules[name]


def holds_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule holds the fused experts of a routed FFN: two or more 3-D parameters
    sharing their first dimension (one slice per expert; :mod:`lapeval.moe`)."""
    for m in module.modules():
        ws = [p for p in m.parameters(recurse=False) if p.dim() == 3]
        if len(ws) >= 2 and len({int(w.shape[0]) for w in ws}) == 1:
            return True
    return False


def find_sites(model: nn.Module, untie: bool = True, site: str | None = None) -> list[Site]:
    """Every layer's neuron site, in layer order: found from module structure, or named by ``site`` (a
    pattern with ``{layer}``, :func:`user_sites`). Raises UnsupportedModelError naming what was looked for."""
    if site:
        return _untie(user_sites(model, site)) if untie else user_sites(model, site)
    layers_name, layers = decoder_layers(model)
    hidden = hidden_size_of(model)
    sites: list[Site] = []
    for i, layer in enumerate(layers):
        if holds_fused_experts(layer):  # a shared expert beside them would pass for the layer's one FFN
            raise UnsupportedModelError(
                f"{type(model).__name__} layer {i}: a routed (mixture-of-experts) FFN: its neurons live inside the "
                "experts, which lapeval.moe finds (find_neuron_sites / find_expert_sites)")
        found = None
        for path, container in layer.named_modules():
            if re.search(r"attn|attention", path.split(".")[-1] if path else "", re.IGNORECASE):
                continue
            if (hit := _site_in(container, hidden)) is not None:
                found = (path, container, hit)
                break
        if found is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} layer {i}: no FFN neuron site found (looked for a module holding an up "
                "projection hidden→d_ff, a down projection d_ff→hidden and one parameter-free non-linearity "
                "module); name it with --site / site=, e.g. model.layers.{layer}.mlp.act_fn"
            )
        path, container, (attr, act, d_ff, gated) = found
        full = ".".join(p for p in (layers_name, str(i), path, attr) if p)
        sites.append(Site(i, full, act, d_ff, gated, container, attr))
    if untie:
        _untie(sites)
    widths = {s.d_ff for s in sites}
    if len(widths) != 1:
        raise UnsupportedModelError(f"{type(model).__name__}: layers differ in FFN width ({sorted(widths)})")
    return sites


def _untie(sites: list[Site]) -> list[Site]:
    """A non-linearity module shared by several layers gets one copy per layer (its own hook point)."""
    seen: set[int] = set()
    for s in sites:
        if id(s.module) in seen:
            s.module = copy.deepcopy(s.module)
            setattr(s.container, s.attr, s.module)
        seen.add(id(s.module))
    return sites


def stack_of(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``model.model`` for Llama-likes, ``transformer`` for GPT-2...)."""
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        return base
    return model
