"""lm-eval's next releases (issue 24): requests built with ``task_name`` / ``doc_id`` keywords where
``Instance`` declares them, the ``lape`` model found through the ``lm_eval.models`` entry point as plugin
discovery will find it, and a request cache of a kind lapeval does not know run without caching."""

from __future__ import annotations

import dataclasses
import math
import warnings
from importlib.metadata import entry_points

import pytest
from conftest import random_mask

pytest.importorskip("lm_eval")

import lm_eval.api.instance  # noqa: E402
from lm_eval.api.model import CacheHook  # noqa: E402

from lapeval import instances as inst  # noqa: E402
from lapeval.errors import LapevalWarning  # noqa: E402

PAIR = ("The cat sat on the", " mat")


# ---- Instance keywords ---------------------------------------------------------------------------------
def test_instances_carry_task_name_and_doc_id_on_the_installed_lm_eval():
    reqs = inst.instances("loglikelihood", [PAIR, ("a", " b"), ("c", " d")], ["lss_en", "lss_fr", "lss_en"])
    assert [(r.task_name, r.doc_id) for r in reqs] == [("lss_en", 0), ("lss_fr", 0), ("lss_en", 1)]
    assert [r.args for r in reqs] == [PAIR, ("a", " b"), ("c", " d")]
    assert all(r.request_type == "loglikelihood" and r.repeats == 1 for r in reqs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _NextInstance:
    """An ``Instance`` as lm-eval 0.5 declares it: ``task_name`` and ``doc_id`` required, no ``metadata``."""

    request_type: str
    doc: dict
    arguments: tuple
    idx: int
    task_name: str
    doc_id: int


def test_instances_pass_keywords_where_instance_requires_them(monkeypatch):
    monkeypatch.setattr(lm_eval.api.instance, "Instance", _NextInstance)
    inst._instance_fields.cache_clear()
    try:
        reqs = inst.instances("generate_until", [("Q:", {"until": ["\n"]})], "lss_ja")
    finally:
        inst._instance_fields.cache_clear()
    assert reqs == [_NextInstance(request_type="generate_until", doc={}, arguments=("Q:", {"until": ["\n"]}), idx=0,
                                  task_name="lss_ja", doc_id=0)]


# ---- the entry point, as plugin discovery loads it -------------------------------------------------------
def _lape_entry_point():
    found = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "lape"]
    if not found:
        pytest.fail('no "lape" in the lm_eval.models entry points: pyproject.toml declares '
                    '[project.entry-points."lm_eval.models"] lape = "lapeval.lm:LapeLM"; reinstall the package')
    return found[0]


@pytest.fixture(scope="module")
def lape_from_entry_point(tiny_model_dir, tmp_path_factory):
    """The ``lape`` class loaded from its entry point and built from a model-args string, as lm-eval does."""
    ep = _lape_entry_point()
    assert ep.value == "lapeval.lm:LapeLM"
    cls = ep.load()
    mask = random_mask(tmp_path_factory.mktemp("mask") / "m.safetensors")
    lm = cls.create_from_arg_string(f"pretrained={tiny_model_dir},neurons={mask},lang=en,mode=zero",
                                    {"batch_size": 1, "device": "cpu"})
    return cls, lm


def test_lape_loads_through_the_entry_point_and_scores_a_request(lape_from_entry_point):
    from lm_eval.api.registry import get_model

    from lapeval.lm import LapeLM

    cls, lm = lape_from_entry_point
    assert cls is LapeLM and get_model("lape") is LapeLM  # one class, whichever way lm-eval finds it
    [(zeroed, greedy)] = lm.loglikelihood(inst.instances("loglikelihood", [PAIR], "lss_en"), disable_tqdm=True)
    assert math.isfinite(zeroed) and zeroed < 0 and isinstance(greedy, bool)
    lm.clear_intervention()
    [(plain, _)] = lm.loglikelihood(inst.instances("loglikelihood", [PAIR], "lss_en"), disable_tqdm=True)
    assert plain != zeroed  # the intervention of the model arguments was applied


# ---- a cache backend lapeval does not know ---------------------------------------------------------------
class _JsonStore(dict):
    """Stands in for a request cache of another kind (lm-eval 0.5's JSON sqlite store)."""

    def commit(self):
        pass


class _Hook:
    def __init__(self, store):
        self.dbdict = store

    def add_partial(self, attr, req, res):
        self.dbdict[(attr, req)] = res


class _OtherHook:
    """A hook of another shape: no ``dbdict`` at all."""

    def __init__(self):
        self.written = []

    def add_partial(self, attr, req, res):
        self.written.append(res)


@pytest.mark.parametrize("kind", ["unknown-dbdict", "unknown-hook"])
def test_unknown_cache_backend_runs_uncached_with_one_warning(lape_from_entry_point, kind):
    _, lm = lape_from_entry_point
    store = _JsonStore()
    hook = _Hook(store) if kind == "unknown-dbdict" else _OtherHook()
    reqs = inst.instances("loglikelihood", [PAIR, ("Le chat", " est")], "lss_en")
    expected = lm.loglikelihood(reqs, disable_tqdm=True)
    with pytest.warns(LapevalWarning) as record:
        lm.set_cache_hook(hook)
    msgs = [str(w.message) for w in record if issubclass(w.category, LapevalWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0] and "without caching" in msgs[0], msgs
    assert ("_JsonStore" if kind == "unknown-dbdict" else "_OtherHook") in msgs[0]
    assert lm._lape_db is None and lm.cache_hook.dbdict is None
    assert lm.loglikelihood(reqs, disable_tqdm=True) == expected
    assert not store and not getattr(hook, "written", [])  # nothing written through the hook
    lm.set_cache_hook(CacheHook(None))


def test_known_cache_backends_give_no_warning(lape_from_entry_point, tmp_path):
    from lm_eval.api.model import CachingLM

    _, lm = lape_from_entry_point
    with warnings.catch_warnings():
        warnings.simplefilter("error", LapevalWarning)
        lm.set_cache_hook(CacheHook(None))
        assert lm._lape_db is None
        CachingLM(lm, str(tmp_path / "c.db"))  # sqlitedict: taken over
        assert lm._lape_db is not None and lm._lape_db._lape_guarded
    lm.set_cache_hook(CacheHook(None))
