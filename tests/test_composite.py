"""Composite, graded and scoped interventions (lapeval.intervention.operation / intervene / setting / lm) against an
independent reference: the non-linearity modules are replaced by a wrapper that applies each term with
plain loops over (row, position, neuron), on the positions a hand-made table marks for each row (built
from where each token came from — context, continuation, generated — not from the library's formula)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import random_mask, tiny_model
from torch import nn

from lapeval.intervention.hooks import Composite, Intervention, intervene
from lapeval.intervention.operation import (
    InterventionError,
    Operation,
    file_name,
    parse_ops,
)
from lapeval.masks import NeuronMask
from lapeval.sites import find_sites

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def mask(tmp_path_factory) -> NeuronMask:
    # 20 neurons per language over 96: en and fr share some (checked below)
    return NeuronMask.load(random_mask(tmp_path_factory.mktemp("m") / "tiny.safetensors", per_lang=20))


# ---- the one spelling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,label", [
    ("set:p_max", "set:p_max"),
    ("zero@English;set=p_max@fr", "zero@en;set:p_max@fr"),
    ("add:2*p_max@ja@10-12+17;scope:generation", "add:2*p_max@ja@10-12+17;scope:generation"),
    ("add:2·p_max@ja", "add:2*p_max@ja"),
    ("set:1*p_max", "set:p_max"),
    ("scale:2@0-5", "scale:2@0-5"),
    ("zero@src; set:p_max@tgt ;scope=last", "zero@src;set:p_max@tgt;scope:last"),
    ("scale:0.5@0+1@en+zh", "scale:0.5@en+zh@0-1"),
    ({"ops": "zero@en;set:p_max", "scope": "prompt"}, "zero@en;set:p_max;scope:prompt"),
    ({"terms": [{"mode": "zero", "lang": "en"}, {"mode": "add", "value": "0.5*tt_max"}]}, "zero@en;add:0.5*tt_max"),
    ([{"mode": "set", "value": "p_max", "lang": "fr", "layers": "3"}], "set:p_max@fr@3"),
])
def test_labels_are_canonical_and_round_trip(text, label):
    spec = parse_ops(text)
    assert spec.label == label
    assert parse_ops(spec.label) == spec  # the label reads back as the same spec


def test_file_names_are_distinct_and_safe():
    labels = ["set:p_max", "set:2*p_max", "zero@en;set:p_max", "zero@en;set:p_max;scope:generation",
              "zero@en;set:p_max;scope:last", "set:p_max;scope:generation", "add:2*p_max@fr", "add:p_max@fr",
              "zero@en+fr;set:p_max", "zero@en;set:p_max@0-3", "set:tt_max", "add:tt_max", "set:0.5*tt_max"]
    names = [file_name(parse_ops(l).label) for l in labels]
    assert len(set(names)) == len(names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=@+._~-") for n in names)
    assert file_name("zero@en;set:p_max;scope:generation") == "zero@en~set=p_max~scope=generation"


def test_graded_operation_values():
    op = Operation.parse("add", "2*p_max")
    assert (op.mode, op.value, op.factor, op.mask_values, op.label) == ("add", "p_max", 2.0, "p_max", "add:2*p_max")
    assert Operation.parse("set", "0.5*tt_p10").statistic == ("quantile", 10.0)
    assert Operation.parse("set", "p_max") == Operation("set", "p_max", 1.0)


@pytest.mark.parametrize("spec,needle", [
    ("explode@fr", "unknown mode 'explode'"),
    ("zero:2*p_max", "zero takes no factor"),
    ("scale:2*p_max", "scale takes no factor"),
    ("set:2*3", "a factor multiplies a statistic"),
    ("set:p_max@fr@en", "two language lists"),
    ("set:p_max@0-1@3", "two layer subsets"),
    ("zero@en;set:p_max;scope:everywhere", "unknown scope 'everywhere'"),
    ("zero@en;;", None),  # empty parts are skipped: a valid spec
    ("set:p_max@self+fr", "self stands alone"),
    ("set:p_max@", "empty part after @"),
    (";scope:all", "no term"),
])
def test_parse_errors_are_one_line(spec, needle):
    if needle is None:
        assert parse_ops(spec).label == "zero@en"
        return
    with pytest.raises(InterventionError) as e:
        parse_ops(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- the lape arguments (build_setting): errors before anything runs ------------------------------------
@pytest.mark.parametrize("kw,needle", [
    ({"ops": "explode@fr"}, "unknown mode 'explode'"),
    ({"ops": "zero@xx"}, None),  # a spelling no language has, or a language the mask lacks: names the mask's
    ({"ops": "zero@de;set:p_max@fr"}, "it has en, fr, ja"),
    ({"ops": "set:p_max@fr@99"}, "names layer 99 but the model has layers 0..1"),
    ({"ops": "zero@en;set:p_max"}, "names no languages and no lang= is given"),
    ({"ops": "set:p_max@fr", "mode": "set"}, "ops= and mode=/value= both given"),
    ({"ops": "set:p_max@fr", "scope": "sometimes"}, "unknown scope 'sometimes'"),
    ({"ops": "set:p_max@fr;scope:prompt", "scope": "generation"}, "give it once"),
])
def test_lape_argument_errors(mask, kw, needle):
    from lapeval.errors import LapevalError
    from lapeval.intervention.setting import build_setting

    args = {"lang": None, "mode": None, "value": None, "layers": None, **kw}
    with pytest.raises(LapevalError) as e:
        build_setting(mask, args.pop("lang"), args.pop("mode"), args.pop("value"), args.pop("layers"),
                      n_layers=2, d_ff=48, **args)
    msg = str(e.value)
    assert "\n" not in msg
    if needle is None:
        assert "xx" in msg and ("it has en, fr, ja" in msg or "unknown language" in msg)
    else:
        assert needle in msg, msg


def test_one_term_ops_is_the_old_setting(mask):
    from lapeval.intervention.setting import build_setting

    old = build_setting(mask, "fr", "set", "p_max", "1", 2, 48)
    new = build_setting(mask, None, None, None, None, 2, 48, ops="set:p_max@fr@1")
    assert old.key() == new.key() and old.label == new.label == "set:p_max@1"
    assert set(old.key()) == {"neurons_sha256", "languages", "mode", "value", "layers"}  # the key it always had
    a, b = old.intervention(), new.intervention()
    assert isinstance(b, Intervention) and b.neurons.keys() == a.neurons.keys()
    assert all(torch.equal(a.neurons[l], b.neurons[l]) and torch.equal(a.values[l], b.values[l]) for l in a.neurons)
    comp = build_setting(mask, "fr", None, None, None, 2, 48, ops="zero@en;add:2*p_max;scope:generation")
    assert comp.label == "zero@en;add:2*p_max@fr;scope:generation"
    k = comp.key()
    assert k["scope"] == "generation" and [t["languages"] for t in k["terms"]] == [["en"], ["fr"]]
    assert k["terms"][1]["factor"] == 2.0 and k != old.key()
    d = comp.describe()
    assert d["label"] == comp.label and d["terms"][0]["n_neurons"]["en"] == 20
    # the cache key holds every part: scope, factor, order of the terms
    variants = ["zero@en;add:2*p_max", "zero@en;add:2*p_max;scope:last", "zero@en;add:3*p_max",
                "add:2*p_max;zero@en", "zero@en@0;add:2*p_max"]
    keys = [build_setting(mask, "fr", None, None, None, 2, 48, ops=v).key() for v in variants]
    assert len({str(sorted(k.items())) for k in keys}) == len(variants)


def test_routing_src_tgt_self(mask):
    from lapeval.intervention.setting import build_setting

    st = build_setting(mask, None, None, None, None, 2, 48, ops="zero@src;set:p_max@tgt")
    tasks = ["flores_mt_en-fr", "flores_mt_fr-en", "flores_mt_en-ja", "xwinograd_jp", "lss_fr", "flores_mt_en-de"]
    groups = dict((k, v) for k, v in st.route(tasks))
    assert groups[(("en",), ("fr",))] == [0] and groups[(("fr",), ("en",))] == [1]
    assert groups[(("en",), ("ja",))] == [2]
    # a task that is not a translation: its prompt's language is both sides (LSS: the facts' language s)
    assert groups[(("ja",), ("ja",))] == [3] and groups[(("fr",), ("fr",))] == [4]
    assert groups[None] == [5]  # de not in the mask: unmodified, counted
    assert "de not in mask" in st.unmodified["flores_mt_en-de"]["reason"]
    assert dict(st.route(["xcopa_id"])) == {None: [0]} and "id not in mask" in st.unmodified["xcopa_id"]["reason"]
    one = build_setting(mask, "ja", None, None, None, 2, 48, ops="zero@src;set:p_max")  # the grid's spelling
    assert dict(one.route(["lss_fr", "flores_mt_en-fr"])) == {(("fr",), ("ja",)): [0], (("en",), ("ja",)): [1]}
    # self = the task's language (paper 2: the non-English side); tgt = the translation's target
    st2 = build_setting(mask, None, None, None, None, 2, 48, ops="set:p_max@self")
    assert dict(st2.route(["flores_mt_fr-en"]))[("fr",)] == [0]
    st3 = build_setting(mask, None, None, None, None, 2, 48, ops="set:p_max@tgt")
    assert dict(st3.route(["flores_mt_fr-en", "lss_ja"])) == {("en",): [0], ("ja",): [1]}


# ---- the reference ------------------------------------------------------------------------------------
def ref_term(a, term, layer, covered, real):
    """One term on ``a`` [B, T, d] (a copy): plain loops, per row, on the covered positions only."""
    out = a.clone()
    op = term.op
    js = term.neurons.get(layer)
    if js is None:
        return out
    vals = dict(zip(js.tolist(), term.values[layer].tolist())) if layer in term.values else {}
    B, T, _ = a.shape
    for b in range(B):
        stat = None
        if op.statistic:  # over the real tokens of the row, all neurons
            xs = sorted(float(a[b, t, k]) for t in range(T) if real[b][t] for k in range(a.shape[2]))
            if op.statistic[0] == "max":
                stat = xs[-1]
            else:
                import math

                stat = xs[max(int(math.floor(op.statistic[1] / 100 * len(xs))), 1) - 1]
        for j in js.tolist():
            if op.mode in ("set", "add"):
                v = stat if stat is not None else (vals[j] if op.value in ("p_max", "p_median") else op.value)
                v = v * op.factor
            for t in range(T):
                if not covered[b][t]:
                    continue
                if op.mode == "zero":
                    out[b, t, j] = 0.0
                elif op.mode == "set":
                    out[b, t, j] = v
                elif op.mode == "scale":
                    out[b, t, j] = a[b, t, j] * op.value
                else:
                    out[b, t, j] = out[b, t, j] + v
    return out


class RefAct(nn.Module):
    def __init__(self, act, layer, state):
        super().__init__()
        self.act, self.layer, self.state = act, layer, state

    def forward(self, x):
        a = self.act(x)
        out = a
        for term in self.state["terms"]:  # in order, each on what the previous left
            out = ref_term(out, term, self.layer, self.state["covered"], self.state["real"])
        return out


def reference_logits(model, comp: Composite, ids, covered, real, **kw):
    sites = find_sites(model)
    state = {"terms": comp.terms, "covered": covered, "real": real}
    originals = [s.module for s in sites]
    try:
        for s in sites:
            setattr(s.container, s.attr, RefAct(s.module, s.layer, state))
        return model(ids, **kw).logits
    finally:
        for s, m in zip(sites, originals):
            setattr(s.container, s.attr, m)


def ll_rows(seed=0, n=8):
    """Log-likelihood rows as lm-eval builds them: input = (context + continuation)[:-1], each token tagged
    with where it came from."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        c, k = int(torch.randint(2, 7, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        ctx = torch.randint(3, 400, (c,), generator=g).tolist()
        cont = torch.randint(3, 400, (k,), generator=g).tolist()
        rows.append((ctx, cont))
    return rows


def covered_by_hand(rows, scope, T):
    """Per row and position: does the scope cover it — from each input token's origin."""
    out, real = [], []
    for ctx, cont in rows:
        origin = ["context"] * len(ctx) + ["continuation"] * (len(cont) - 1)
        last_ctx = len(ctx) - 1
        row = []
        for t in range(T):
            if t >= len(origin):
                row.append(False)
            elif scope == "all":
                row.append(True)
            elif scope == "prompt":
                row.append(origin[t] == "context")
            elif scope == "generation":
                row.append(origin[t] == "continuation")
            else:  # last
                row.append(origin[t] == "continuation" or t == last_ctx)
        out.append(row)
        real.append([t < len(origin) for t in range(T)])
    return out, real


def batch_of(rows):
    inps = [ctx + cont[:-1] for ctx, cont in rows]
    T = max(map(len, inps))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    for b, x in enumerate(inps):
        ids[b, : len(x)] = torch.tensor(x)
    return ids, [len(x) for x in inps], [len(c) for _, c in rows]


def composite(mask, scope, spec="zero@en;set:p_max@fr;add:0.5*p_max@ja"):
    from lapeval.intervention.setting import build_setting

    st = build_setting(mask, None, None, None, None, 2, 48, ops=spec, scope=scope)
    return st.intervention()


SCOPES = ["all", "prompt", "generation", "last"]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("spec", ["zero@en;set:p_max@fr;add:0.5*p_max@ja", "scale:3@en+ja;set:tt_max@fr"])
def test_every_scope_matches_the_hand_reference_on_log_likelihood_rows(mask, scope, spec):
    model = tiny_model("llama")
    rows = ll_rows()
    ids, lengths, conts = batch_of(rows)
    comp = composite(mask, scope, spec)
    covered, real = covered_by_hand(rows, scope, ids.shape[1])
    want = reference_logits(model, comp, ids, covered, real)
    with intervene(model, comp) as s:
        s.set_lengths(lengths)
        s.set_continuations(conts)
        got = model(ids).logits
    m = torch.tensor(real)
    torch.testing.assert_close(got[m], want[m], rtol=0, atol=1e-10)
    base = model(ids).logits
    assert (got[m] - base[m]).abs().max() > 1e-4  # it did intervene
    # batch 1 vs 8: each row alone gives the same numbers
    for b, row in enumerate(rows):
        i1, l1, c1 = batch_of([row])
        with intervene(model, comp) as s:
            s.set_lengths(l1)
            s.set_continuations(c1)
            alone = model(i1).logits[0, : l1[0]]
        torch.testing.assert_close(alone, got[b, : lengths[b]], rtol=0, atol=1e-10)


def test_scopes_partition_the_sequence(mask):
    """prompt + generation cover each real position exactly once; last = generation + the last prompt token."""
    model = tiny_model("llama")
    rows = ll_rows(seed=4)
    ids, lengths, conts = batch_of(rows)
    comp = composite(mask, "generation")
    with intervene(model, comp) as s:
        s.set_lengths(lengths)
        s.set_continuations(conts)
        model(ids)
        where = {sc: s.where(sc, torch.device("cpu")) for sc in ("prompt", "generation", "last")}
    real = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    assert torch.equal(where["prompt"] | where["generation"], real)
    assert not (where["prompt"] & where["generation"]).any()
    assert ((where["last"] & ~where["generation"]).sum(1) == 1).all()


def test_composition_order_on_shared_neurons(mask):
    """Later terms act on what earlier ones left: on a neuron en and fr share, zero-then-set ends at p_max,
    set-then-zero at 0; each term alone equals the one-term intervention."""
    en, fr = mask.sets["en"], mask.sets["fr"]
    shared = {(int(l), int(j)) for l, j in zip(en.layer, en.neuron)} & {(int(l), int(j)) for l, j in zip(fr.layer, fr.neuron)}
    assert shared, "the fixture mask must give en and fr shared neurons"
    model = tiny_model("llama")
    sites = find_sites(model)
    ids = torch.randint(3, 400, (2, 6), generator=torch.Generator().manual_seed(0))
    seen = {}

    def grab(layer):
        def hook(module, args, out):
            seen[layer] = out.detach().clone()
        return hook

    def activations(comp):
        with intervene(model, comp):
            hs = [s.module.register_forward_hook(grab(s.layer)) for s in sites]  # after lapeval's: sees its edits
            try:
                logits = model(ids).logits
            finally:
                for h in hs:
                    h.remove()
        return logits, dict(seen)

    zs = composite(mask, "all", "zero@en;set:p_max@fr")
    sz = composite(mask, "all", "set:p_max@fr;zero@en")
    _, a_zs = activations(zs)
    _, a_sz = activations(sz)
    pfr = {(int(l), int(j)): float(v) for l, j, v in zip(fr.layer, fr.neuron, fr.values["p_max"])}
    for l, j in shared:
        assert torch.allclose(a_zs[l][..., j], torch.tensor(pfr[(l, j)], dtype=a_zs[l].dtype))
        assert torch.all(a_sz[l][..., j] == 0)
    # alone, each term is the one-term intervention (bit-identical logits)
    single = Intervention.from_mask(mask, ["fr"], "set", "p_max")
    with intervene(model, single):
        want = model(ids).logits
    with intervene(model, Composite((single,), "all")):
        got = model(ids).logits
    assert torch.equal(got, want)


def test_scope_without_boundaries_is_a_one_line_error(mask):
    model = tiny_model("llama")
    with intervene(model, composite(mask, "generation")):
        with pytest.raises(InterventionError, match="scope=generation needs each row's prompt length"):
            model(torch.randint(3, 400, (1, 5)))


# ---- generation: the KV-cached decode step -----------------------------------------------------------
def generate(model, comp, ids, am, n=5):
    with intervene(model, comp) as s:
        s.set_prompt_length(ids.shape[1])
        out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=n, do_sample=False, use_cache=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("scope", SCOPES)
def test_generation_scopes_cached_equal_the_reference_on_the_whole_sequence(mask, scope):
    model = tiny_model("llama")
    P, n = 6, 5
    ids = torch.randint(3, 400, (1, P), generator=torch.Generator().manual_seed(7))
    comp = composite(mask, scope)
    seq, logits = generate(model, comp, ids, torch.ones_like(ids), n)
    full = seq[:, :-1]  # every token the decode steps saw
    origin = ["prompt"] * P + ["generated"] * (full.shape[1] - P)
    cov = [[{"all": True, "prompt": o == "prompt", "generation": o == "generated",
             "last": o == "generated" or t == P - 1}[scope] for t, o in enumerate(origin)]]
    want = reference_logits(model, comp, full, cov, [[True] * full.shape[1]])
    torch.testing.assert_close(logits[0].double(), want[0, P - 1:], rtol=0, atol=1e-6)  # generate returns float32
    # and the same greedy tokens as the uncached loop under the same hooks
    with intervene(model, comp) as s:
        s.set_prompt_length(P)
        nocache = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(nocache, seq)


def test_generation_batch_of_8_left_padded_equals_rows_alone(mask):
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 400, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g) for _ in range(8)]
    P = max(len(p) for p in prompts)
    ids = torch.zeros(8, P, dtype=torch.long)
    am = torch.zeros(8, P, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = p
        am[b, P - len(p):] = 1
    for scope in ("generation", "last"):
        comp = composite(mask, scope)
        seq8, lg8 = generate(model, comp, ids, am)
        for b, p in enumerate(prompts):
            seq1, lg1 = generate(model, comp, p[None, :], torch.ones(1, len(p), dtype=torch.long))
            assert torch.equal(seq8[b, P:], seq1[0, len(p):])
            torch.testing.assert_close(lg8[b], lg1[0], rtol=0, atol=1e-8)


# ---- the lape model: scopes on lm-eval's own request paths ------------------------------------------------
def test_lape_scoped_requests_batch_invariant_and_consistent(tiny_model_dir, tmp_path):
    """Through lm-eval's HFLM paths: scoped log-likelihoods and generations are identical at batch sizes 1
    and 8; scope=generation leaves a one-token continuation's score at the baseline (no continuation token
    is in the input), scope=prompt with it equals scope=all; what the hand reference checks on the raw model
    (above) is the cached generation path computes too (test above, on the raw model)."""
    from lm_eval.api.instance import Instance

    from lapeval.lm import LapeLM

    m = random_mask(tmp_path / "m.safetensors", per_lang=30)
    lm = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=1)
    texts = [("The cat sat", " on the mat"), ("Kucing itu duduk di atas", " tikar dan"), ("Le chat", " est assis"),
             ("Paka alikaa kwenye", " mkeka"), ("The cat sat on the mat and looked", " at the birds"),
             ("a b c", " d"), ("Con mèo", " ngồi trên tấm thảm và nhìn"), ("x", " y z w v")]
    ll = [Instance("loglikelihood", {}, (c, x), i, ("xcopa_fr", i, 1)) for i, (c, x) in enumerate(texts)]
    gen = [Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}), i,
                    ("xcopa_fr", i, 1)) for i, (c, _) in enumerate(texts)]

    def run(scope, bs, ops="zero@en;set:p_max@fr"):
        lm.batch_size_per_gpu = bs
        lm.set_intervention(neurons=m, ops=ops, scope=scope)
        return [r[0] for r in lm.loglikelihood(ll)], lm.generate_until(gen)

    base_ll = [r[0] for r in (lm.clear_intervention() or lm.loglikelihood(ll))]
    res = {}
    for scope in SCOPES:
        (l1, g1), (l8, g8) = run(scope, 1), run(scope, 8)
        assert max(abs(a - b) for a, b in zip(l1, l8)) <= 1e-5 and g1 == g8, scope
        res[scope] = l1
    one_token = [i for i, (c, x) in enumerate(texts) if len(lm._encode_pair(c, x)[1]) == 1]
    assert one_token
    for i in one_token:
        assert res["generation"][i] == pytest.approx(base_ll[i], abs=1e-6)
        assert res["prompt"][i] == pytest.approx(res["all"][i], abs=1e-6)
    assert max(abs(a - b) for a, b in zip(res["generation"], base_ll)) > 1e-3  # longer continuations moved
    assert max(abs(a - b) for a, b in zip(res["all"], res["prompt"])) > 1e-3
    info = lm.get_model_info()["lape"]["intervention"]
    assert info["scope"] == "last" and info["label"] == "zero@en;set:p_max@fr;scope:last"
    lm.clear_intervention()
