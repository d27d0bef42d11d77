"""lapeval.intervention.hooks against an independent reference: the non-linearity modules are *replaced* by a
wrapper that applies each operation with plain Python loops over (row, position, neuron), and the logits
of the hooked model must match the reference-patched model (float64 tiny models)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAMILIES, tiny_model
from torch import nn

from lapeval.intervention.hooks import Intervention, Session, intervene
from lapeval.intervention.operation import InterventionError, Operation, parse_layers
from lapeval.masks import MaskError, NeuronMask
from lapeval.sites import Site, find_sites


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def assert_real_close(got, want, am, atol):
    """Logits at real (non-pad) positions; some families give NaN at fully-masked pad positions."""
    real = am.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=atol)


# ---- the reference -------------------------------------------------------------------------------
def ref_value(op_value, a_row, mask_row, j, per_neuron):
    """v_j for one row: a number, the per-neuron value, or the test-time statistic over real tokens."""
    if isinstance(op_value, float):
        return op_value
    if op_value in ("p_max", "p_median"):
        return per_neuron[j]
    real = [float(a_row[t, jj]) for t in range(a_row.shape[0]) if mask_row[t] for jj in range(a_row.shape[1])]
    if op_value == "tt_max":
        return max(real)
    q = float(op_value[len("tt_p"):])
    k = max(int(math.floor(q / 100 * len(real))), 1)
    return sorted(real)[k - 1]


def ref_apply(a, mode, value, neurons, per_neuron, mask):
    """a: [B, T, d] (a copy is returned); plain loops, formulas of the lapeval.intervention.hooks docstring."""
    out = a.clone()
    B, T, _ = a.shape
    for b in range(B):
        row_stat = {}
        for j in neurons:
            v = None
            if mode in ("set", "add"):
                if isinstance(value, str) and value.startswith("tt_"):  # the same for every neuron of the row
                    if "v" not in row_stat:
                        row_stat["v"] = ref_value(value, a[b], mask[b], j, per_neuron)
                    v = row_stat["v"]
                else:
                    v = ref_value(value, a[b], mask[b], j, per_neuron)
            for t in range(T):
                if mode == "zero":
                    out[b, t, j] = 0.0
                elif mode == "set":
                    out[b, t, j] = v
                elif mode == "scale":
                    out[b, t, j] = a[b, t, j] * value
                elif mode == "add":
                    out[b, t, j] = a[b, t, j] + v
    return out


class RefAct(nn.Module):
    """Replaces a site's non-linearity: act, then the reference operation for each row's spec."""

    def __init__(self, act, layer, state):
        super().__init__()
        self.act, self.layer, self.state = act, layer, state

    def forward(self, x):
        a = self.act(x)
        B, T = self.state["shape"]
        flat = a.dim() == 2
        a3 = a.view(B, T, -1) if flat else a
        out = a3.clone()
        for b, spec in enumerate(self.state["rows"]):
            if spec is None or self.layer not in spec["neurons"]:
                continue
            per = dict(zip(spec["neurons"][self.layer], spec.get("values", {}).get(self.layer, [])))
            out[b : b + 1] = ref_apply(a3[b : b + 1], spec["mode"], spec["value"], spec["neurons"][self.layer], per,
                                       self.state["mask"][b : b + 1])
        return out.view_as(a) if flat else out


def reference_logits(model, sites, ids, mask, row_specs, attention_mask=None):
    state = {"shape": tuple(ids.shape), "rows": row_specs, "mask": mask.tolist()}
    originals = [s.module for s in sites]
    try:
        for s in sites:
            setattr(s.container, s.attr, RefAct(s.module, s.layer, state))
        kw = {} if attention_mask is None else {"attention_mask": attention_mask}
        return model(ids, **kw).logits
    finally:
        for s, m in zip(sites, originals):
            setattr(s.container, s.attr, m)


def spec_of(iv: Intervention) -> dict:
    return {"mode": iv.op.mode, "value": iv.op.value,
            "neurons": {l: j.tolist() for l, j in iv.neurons.items()},
            "values": {l: v.tolist() for l, v in iv.values.items()}}


def random_iv(d_ff, mode, value, seed=0, layers=(0, 1), k=5):
    g = torch.Generator().manual_seed(seed)
    neurons = {l: torch.randperm(d_ff, generator=g)[:k].tolist() for l in layers}
    values = {l: (torch.rand(k, generator=g, dtype=torch.float64) * 3).tolist() for l in layers} if value in ("p_max", "p_median") else None
    return Intervention.from_neurons(neurons, mode, value, values=values)


CASES = [("zero", None), ("set", 0.5), ("set", "p_max"), ("scale", 3.0), ("scale", -0.5), ("add", -0.7),
         ("add", "p_median"), ("set", "tt_max"), ("add", "tt_max"), ("set", "tt_p10"), ("set", "tt_p50")]


def _batch(T=7, B=3, pad_left=(0, 2, 4)):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 400, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pad_left):
        am[b, :p] = 0
        ids[b, :p] = 0
    return ids, am


# ---- operations against the reference ----------------------------------------------------------------
@pytest.mark.parametrize("mode,value", CASES)
def test_uniform_matches_reference(mode, value):
    model = tiny_model("llama")
    sites = find_sites(model)
    ids, am = _batch()
    iv = random_iv(sites[0].d_ff, mode, value)
    with intervene(model, iv, sites=sites):
        got = model(ids, attention_mask=am).logits
    want = reference_logits(model, sites, ids, am.bool(), [spec_of(iv)] * 3, attention_mask=am)
    assert_real_close(got, want, am, atol=1e-10)
    base = model(ids, attention_mask=am).logits
    assert not torch.allclose(got, base) or (mode, value) == ("scale", 1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_row_matches_reference_in_every_family(family):
    model = tiny_model(family)
    sites = find_sites(model)
    ids, am = _batch(pad_left=(0, 0, 0))  # (left padding itself is covered on llama; gemma2 NaNs at pads)
    ivs = [random_iv(sites[0].d_ff, "set", "tt_max", seed=1), random_iv(sites[0].d_ff, "add", "p_max", seed=2)]
    rows = [1, -1, 0]
    with intervene(model, ivs, rows=rows, sites=sites):
        got = model(ids, attention_mask=am).logits
    specs = [spec_of(ivs[r]) if r >= 0 else None for r in rows]
    want = reference_logits(model, sites, ids, am.bool(), specs, attention_mask=am)
    assert_real_close(got, want, am, atol=1e-9)


def test_scale_by_one_is_bit_identical():
    model = tiny_model("gemma3", dtype=torch.float32)
    ids, am = _batch()
    base = model(ids, attention_mask=am).logits
    iv = random_iv(48, "scale", 1.0, k=20)
    with intervene(model, iv) as session:
        assert session is not None
        same = model(ids, attention_mask=am).logits
    assert torch.equal(base, same)


def test_per_row_equals_each_row_alone():
    model = tiny_model("qwen2")
    ids, am = _batch(pad_left=(0, 0, 0))
    ivs = [random_iv(48, "set", "tt_p10", seed=4), random_iv(48, "zero", None, seed=5)]
    rows = [0, 1, -1]
    with intervene(model, ivs, rows=rows):
        batched = model(ids).logits
    for b, r in enumerate(rows):
        with intervene(model, None if r < 0 else ivs[r]):
            alone = model(ids[b : b + 1]).logits
        torch.testing.assert_close(batched[b : b + 1], alone, rtol=0, atol=1e-12)


def test_statistics_ignore_right_padding_given_lengths():
    """lm-eval's log-likelihood batches: right-padded with id 0 and no attention mask."""
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 400, (n,), generator=g) for n in (9, 5, 2)]
    T = 9
    batch = torch.stack([torch.cat([r, torch.zeros(T - len(r), dtype=torch.long)]) for r in rows])
    for value in ("tt_max", "tt_p10"):
        iv = random_iv(48, "set", value, seed=7)
        with intervene(model, iv) as session:
            session.set_lengths([len(r) for r in rows])
            padded = model(batch).logits
            alone = [model(r[None]).logits for r in rows]
            unmasked = model(batch).logits  # lengths apply to one call only: pads now count
        for b, r in enumerate(rows):
            torch.testing.assert_close(padded[b, : len(r)], alone[b][0], rtol=0, atol=1e-12)
        assert not torch.allclose(unmasked[2, :2], alone[2][0])


def test_generation_is_batch_invariant_with_kv_cache():
    """Left-padded prompts, cached decode steps: each row's statistics are its own."""
    model = tiny_model("llama")
    ids, am = _batch(T=6, pad_left=(0, 1, 3))
    iv = random_iv(48, "add", "tt_max", seed=9, k=8)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with intervene(model, iv):
        batched = model.generate(input_ids=ids, attention_mask=am, **kw)
        for b in range(3):
            p = int((am[b] == 0).sum())
            alone = model.generate(input_ids=ids[b : b + 1, p:], attention_mask=am[b : b + 1, p:], **kw)
            assert batched[b, -6:].tolist() == alone[0, -6:].tolist()
    with intervene(model, None):
        base = model.generate(input_ids=ids, attention_mask=am, **kw)
    assert not torch.equal(base, batched)


# ---- building interventions -----------------------------------------------------------------------
def _mask(tmp_path, values=True):
    assigned = torch.zeros(3, 2, 48, dtype=torch.bool)
    assigned[0, 0, [1, 2, 3]] = True
    assigned[1, 0, [3, 4]] = True
    assigned[1, 1, [7]] = True
    assigned[2, 1, [9]] = True
    vals = {"p_max": torch.arange(3 * 2 * 48, dtype=torch.float32).view(3, 2, 48) / 100} if values else None
    return NeuronMask.from_assignment(assigned, ["en", "id", "fr"], vals).save(tmp_path / "m.safetensors")


def test_from_mask_union_values_and_layers(tmp_path):
    mask = NeuronMask.load(_mask(tmp_path))
    iv = Intervention.from_mask(mask, ["en", "Indonesian"], "set", "p_max")
    assert iv.languages == ("en", "id")
    assert iv.neurons[0].tolist() == [1, 2, 3, 4] and iv.neurons[1].tolist() == [7]
    # neuron (0, 3) is shared: the larger value (id's) wins
    assert iv.values[0].tolist() == pytest.approx([0.01, 0.02, (96 + 3) / 100, (96 + 4) / 100])
    only1 = Intervention.from_mask(mask, ["en", "id"], "zero", layers="1")
    assert list(only1.neurons) == [1] and only1.layers == (1,)
    assert Intervention.from_mask(mask, ["en"], "zero", layers=[1]).n_neurons == 0


def test_errors_are_one_line(tmp_path):
    mask = NeuronMask.load(_mask(tmp_path, values=False))
    cases = [
        (lambda: Operation.parse("boost", 2), "unknown mode"),
        (lambda: Operation.parse(None), "mode= is required"),
        (lambda: Operation.parse("zero", 3), "takes no value"),
        (lambda: Operation.parse("set", None), "needs value="),
        (lambda: Operation.parse("scale", "p_max"), "numeric factor"),
        (lambda: Operation.parse("set", "huge"), "bad value"),
        (lambda: Operation.parse("set", "tt_p0"), "percentile"),
        (lambda: Operation.parse("add", float("nan")), "finite"),
        (lambda: parse_layers("0-99", 2), "layers 0..1"),
        (lambda: parse_layers("a-b", 2), "bad layers"),
        (lambda: Intervention.from_mask(mask, ["xx"], "zero"), "it has en, id, fr"),
        (lambda: Intervention.from_mask(mask, ["ja"], "zero"), "it has en, id, fr"),
        (lambda: Intervention.from_mask(mask, ["en"], "set", "p_max"), "no p_max values"),
        (lambda: NeuronMask.load(tmp_path / "missing.safetensors"), "does not exist"),
    ]
    for fn, text in cases:
        with pytest.raises((InterventionError, MaskError)) as e:
            fn()
        assert text in str(e.value) and "\n" not in str(e.value)


def test_parse_layers_forms():
    assert parse_layers(None, 18) is None and parse_layers("all", 18) is None
    assert parse_layers("0-3", 18) == (0, 1, 2, 3)
    assert parse_layers("0+5+17", 18) == (0, 5, 17)
    assert parse_layers([2, 1], 18) == (1, 2)
    assert parse_layers(4, 18) == (4,)


# ---- hooks never leak -----------------------------------------------------------------------------
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_exceptions():
    model = tiny_model("llama")
    ids, _ = _batch(pad_left=(0, 0, 0))
    iv = random_iv(48, "set", "tt_max")
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, iv):
            assert _hook_count(model) > 0
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(InterventionError, match="rows names 2 rows"):  # raised inside the forward
        with intervene(model, [iv], rows=[0, 0]):
            model(ids)
    assert _hook_count(model) == 0
    with pytest.raises(InterventionError, match="several interventions need rows"):
        with intervene(model, [iv, iv]):
            pass
    assert _hook_count(model) == 0


def test_noop_installs_nothing():
    model = tiny_model("llama")
    with intervene(model, None) as s:
        assert s is None and _hook_count(model) == 0
    with intervene(model, Intervention.from_neurons({}, "zero")) as s:
        assert s is None and _hook_count(model) == 0


def test_tensors_sit_on_each_layers_device():
    """parallelize=True (device_map): a layer's indices/values go to that layer's device."""
    model = tiny_model("llama")
    sites = find_sites(model)
    meta = nn.Linear(2, 2, device="meta")
    fake = [sites[0], Site(1, sites[1].name, sites[1].module, sites[1].d_ff, True, meta, sites[1].attr)]
    iv = random_iv(48, "set", "p_max")
    s = Session(fake, [iv], None)
    (j0, v0), = s._placed[("neuron", 0)][0]  # layer 0, intervention 0, its one term
    (j1, v1), = s._placed[("neuron", 1)][0]
    assert j0.device.type == "cpu" and v0.device.type == "cpu"
    assert j1.device.type == "meta" and v1.device.type == "meta"
