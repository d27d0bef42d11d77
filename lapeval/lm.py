"""The ``lape`` lm-eval model: Hugging Face ``hf`` plus language-neuron interventions.

``--model lape --model_args pretrained=NAME,neurons=MASK.safetensors,lang=id,mode=set,value=p_max[,layers=0-5]``

* ``pretrained``: a known lapeval model name (``gemma-3-270m``), a local folder or a hub id; every other
  ``hf`` argument works unchanged (``dtype``, ``parallelize``, ``batch_size`` ...).
* ``neurons``: a lapeval mask file; without it (and without ``vectors``) ``lape`` *is* ``hf`` (same code path,
  no hooks).
* ``vectors``: a residual-vectors file (``lapeval vectors``, DiffMean): ``mode=add,value=α`` adds α · v_lang to the
  decoder layers' outputs (``layers=`` a subset), with the same ``lang``/``scope``/``ops`` as neurons; with both
  files, ``ops=`` terms written ``vec:add:α@LANG`` act on the vectors.
* ``lang``: one code, several joined by ``+`` (``en+zh``), ``all`` (every language of the mask), or ``self``:
  each request gets the neurons of its own task's language (:func:`lapeval.languages.task_language` of
  ``Instance.task_name`` and of that task's ``metadata.lapeval_language``), requests being grouped per
  language, so a whole self-language row is one run. Works on lm-eval's own multilingual tasks too
  (``--tasks belebele,xnli,xstorycloze``). A request whose task has no known language, or a language the
  mask lacks, runs unmodified and is counted per task under ``config.lape.intervention.unmodified``.
* ``lang_map``: languages for tasks no rule covers (or overriding one), ``PATTERN:LANG`` pairs joined by
  ``;`` (lm-eval splits model arguments on commas): ``lang_map=kmmlu*:ko;mgsm_en_cot_*:none``; a dict
  from Python (:class:`lapeval.languages.LangMap`).
* ``mode`` / ``value`` / ``layers``: the operation of :mod:`lapeval.intervention.hooks` (zero | set | scale | add
  with a number, ``p_max``, ``p_median``, ``tt_max``, ``tt_p10`` or a graded ``2*p_max``), in all layers or a
  subset.
* ``ops``: several terms in one forward, joined by ``;`` (lm-eval splits model arguments on commas), each
  ``MODE[:VALUE]@LANGS[@LAYERS]``: ``ops=zero@en;set:p_max@fr``, ``ops=zero@src;add:2*p_max@tgt`` (a
  translation task's source and target). A term without ``@LANGS`` takes ``lang=``, one without
  ``@LAYERS`` takes ``layers=``. Later terms act on what earlier ones left (:mod:`lapeval.intervention.operation`).
* ``scope``: ``all`` (default: every real token of prompt, continuation and generated text), ``prompt``,
  ``generation`` (generated tokens; for log-likelihood requests the continuation tokens) or ``last`` (the
  last prompt token and every generated one); :mod:`lapeval.intervention.hooks` gives the positions.

Test-time statistics are per row over real tokens: log-likelihood batches are right-padded without an
attention mask, so the rows' real lengths are read where lm-eval pads them (:func:`_padding_tap`), and, for
a scope, their continuation lengths where lm-eval batches them (:func:`_batch_tap`); generation passes its
mask, and its prompt length is read in :meth:`LapeLM._model_generate`.

Provenance goes to the results JSON (``config.lape``: mask sha256, every term's languages, mode, value, layers, the scope,
lapeval version). ``--use_cache`` is made intervention-aware: lm-eval's ``CachingLM`` keys on request text
only, so this model takes its database over (see :meth:`LapeLM.set_cache_hook`) and keys every entry on the
request, the model and the intervention that request runs under.

Python API for grids: one instance, many settings, no reload::

    lm = LapeLM(pretrained="gemma-3-270m", device="cpu", batch_size=8)
    lm.set_intervention(neurons="neuron_masks/gemma-3-270m.safetensors", lang="fr", mode="zero")
    simple_evaluate(model=lm, tasks=[...]); lm.clear_intervention()
    with lm.apply([iv_a, iv_b], rows=[0, 1, 1, 0]): lm._model_call(batch)   # cells as batch rows
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

import torch
from lm_eval.api.model import CacheHook, hash_args
from lm_eval.api.registry import register_model
from lm_eval.models import huggingface as _hf
from lm_eval.models.huggingface import HFLM

from . import __version__, models
from .intervention.hooks import intervene
from .intervention.setting import (  # noqa: F401 (re-exported)
    LapeConfigError,
    Setting,
    build_setting,
    cache_identity,
    route,
)
from .languages import LangMap
from .moe import find_neuron_sites, is_expert_sites
from .sites import hidden_size_of


@register_model("lape")
class LapeLM(HFLM):
    """lm-eval's HFLM with the interventions of :mod:`lapeval.intervention.hooks` — the ``lape`` model.

    ``neurons``: a mask path or :class:`~lapeval.masks.NeuronMask` (none: exactly ``hf``); ``lang``: a code,
    several (``en+zh``), ``all`` or ``self``; ``mode`` / ``value`` / ``layers``: the operation
    (``set`` / ``p_max`` ...; :mod:`lapeval.intervention.operation`); every other keyword goes to ``HFLM``. The setting
    itself (:class:`~lapeval.intervention.setting.Setting`) is backend-neutral; this class adds HFLM's request methods.

    Example::

        lm = lapeval.LapeLM(pretrained="gemma-3-270m", neurons="neuron_masks/gemma-3-270m.safetensors",
                            lang="id", mode="set", value="p_max", batch_size=8, device="cpu")
        simple_evaluate(model=lm, tasks=["xcopa_id"])
        lm.set_intervention(neurons=lm.intervention.mask, lang="zh", mode="zero")   # no reload
    """

    def __init__(self, pretrained, neurons=None, lang=None, mode=None, value=None, layers=None,
                 lang_map=None, site: str | None = None, device: str | None = None, ops=None, scope=None,
                 vectors=None, **kwargs) -> None:
        setting = build_setting(neurons, lang, mode, value, layers, lang_map=lang_map, ops=ops, scope=scope,
                                vectors=vectors)  # fail fast
        self.lang_map: LangMap | None = LangMap.parse(lang_map)  # the default of set_intervention
        self._lape_name = pretrained if isinstance(pretrained, str) else None
        if isinstance(pretrained, str):
            pretrained = models.resolve(pretrained)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        models.check_device(device, "device=")  # HFLM would fail later with an assertion deep in torch
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        # site=: a module path with {layer}, else structural (routed layers: lapeval.moe.ExpertSite)
        self.sites = find_neuron_sites(self.model, site=site)
        if setting is not None:  # the mask and vectors against the loaded model: built once, checked now
            if setting.mask is not None:
                check_mask(setting.mask, self.sites)
            if setting.vectors is not None:
                setting.vectors.check_model(len(self.sites), hidden_size_of(self.model))
        self._lape: Setting | None = setting
        self._lape_db = None
        self._lape_session = None
        self._lape_memo: dict[str, Any] = {}

    # ---- the Python API ---------------------------------------------------------------------------
    def set_intervention(self, neurons=None, lang=None, mode=None, value=None, layers=None, lang_map=None,
                         ops=None, scope=None, vectors=None) -> None:
        """Switch the intervention (no reload). ``neurons=None`` clears it. ``lang_map``: for ``self`` /
        ``src`` / ``tgt`` (default: the model's own, :attr:`lang_map`); ``ops`` / ``scope``: as the model
        arguments."""
        self._lape = build_setting(neurons, lang, mode, value, layers, len(self.sites), neuron_width(self.sites),
                                   lang_map=self.lang_map if lang_map is None else lang_map, ops=ops, scope=scope,
                                   vectors=vectors, hidden=hidden_size_of(self.model))
        if self._lape is not None and self._lape.mask is not None:
            check_mask(self._lape.mask, self.sites)

    def clear_intervention(self) -> None:
        self._lape = None

    @property
    def intervention(self) -> Setting | None:
        return self._lape

    def apply(self, interventions, rows=None):
        """``with lm.apply(iv)`` / ``with lm.apply([iv_a, iv_b], rows=[...])``: hooks for direct model calls."""
        return intervene(self.model, interventions, rows=rows, sites=self.sites)

    def describe_intervention(self) -> dict:
        d = {"lapeval_version": __version__, "model": models.identity(self._lape_name or str(self.pretrained))}
        d["intervention"] = None if self._lape is None else self._lape.describe()
        if self.lang_map:
            d["lang_map"] = self.lang_map.to_dict()
        return d

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["lape"] = self.describe_intervention()
        return info

    # ---- requests ---------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._run("loglikelihood", requests, lambda r: HFLM.loglikelihood(self, r, disable_tqdm=disable_tqdm))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._run("loglikelihood_rolling", requests,
                         lambda r: HFLM.loglikelihood_rolling(self, r, disable_tqdm=disable_tqdm))

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """HFLM's generate call; under a scope the session learns where the (left-padded) prompt ends."""
        session = self._lape_session
        if session is None or not session.scoped:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        session.set_prompt_length(int(context.shape[1]))
        try:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            session.set_prompt_length(None)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        """``batch_size=auto``'s probe forwards run without edits (they hold no request)."""
        session = self._lape_session
        if session is None:
            return super()._detect_batch_size(requests, pos)
        session.paused = True
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            session.paused = False

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._run("generate_until", requests, lambda r: HFLM.generate_until(self, r, disable_tqdm=disable_tqdm))

    def _groups(self, requests) -> list[tuple[tuple[str, ...] | None, list[int]]]:
        """Requests grouped by the languages whose neurons they run with (None: no intervention); each
        task's config metadata as its requests' task noted it (:func:`_note_task`)."""
        return route(self._lape, [getattr(r, "task_name", None) for r in requests], TASK_METADATA)

    def _run(self, attr: str, requests, call: Callable[[list], list]) -> list:
        db = self._lape_db
        use_db = db is not None and db._lape_looked_up  # only inside a CachingLM call (see set_cache_hook)
        if db is not None:
            db._lape_looked_up = False
        out: list[Any] = [None] * len(requests)
        for langs, idx in self._groups(requests):
            iv = None if langs is None else self._lape.intervention(langs)
            salt = json.dumps(self._cache_identity(langs), sort_keys=True)
            keys = {i: self._cache_key(attr, requests[i].args, salt) for i in idx} if self._lape_memo or use_db else {}
            stores = []  # where an answer may already be: prefilled (cells as batch rows), then the cache db
            if self._lape_memo:
                stores.append((self._lape_memo.__contains__, self._lape_memo.__getitem__))
            if use_db:
                stores.append((lambda k: _db_has(db, k), lambda k: _db_get(db, k)))
            todo = idx
            for has, get in stores:
                rest = []
                for i in todo:
                    if keys[i] is not None and has(keys[i]):
                        out[i] = get(keys[i])
                    else:
                        rest.append(i)
                todo = rest
            if todo:
                with self._active(iv):
                    res = call([requests[i] for i in todo])
                for i, r in zip(todo, res, strict=True):
                    out[i] = r
                    if use_db and keys[i] is not None:
                        _db_set(db, keys[i], r)
        if use_db:
            db.commit()
        return out

    @contextmanager
    def _active(self, iv):
        """Hooks (and, for test-time statistics and scopes, the padding and batch taps) around one
        request-method call."""
        if iv is None:
            yield
            return
        with intervene(self.model, iv, sites=self.sites) as session:
            self._lape_session = session
            try:
                with _taps(session, rows=False):
                    yield
            finally:
                self._lape_session = None

    # ---- caching ----------------------------------------------------------------------------------
    def _cache_identity(self, langs, setting: Setting | None = None) -> dict:
        return cache_identity(self._lape_name or str(self.pretrained), str(self.model.dtype), setting or self._lape, langs)

    @staticmethod
    def _cache_key(attr: str, args: tuple, salt: str) -> str | None:
        """The key of a request's answer (its ``Instance.args``) under the setting that ``salt`` describes."""
        if attr == "generate_until" and args[1].get("do_sample", False):
            return None  # sampled generations are never cached (as CachingLM)
        return "lape:" + hash_args(attr, [*args, salt])

    # ---- cells as batch rows -------------------------------------------------------------------------
    def prefill(self, requests, settings: list[dict]) -> int:
        """Score the log-likelihood ``requests`` under every one of ``settings`` (``set_intervention``
        keyword dicts with explicit languages) in ONE pass whose batches mix rows of different settings,
        each row hooked with its own setting's neurons. Later requests under a prefilled setting are
        answered from memory (until :meth:`clear_prefill`). Returns the number of rows scored.

        Tokenisation is lm-eval's own (``TemplateLM.loglikelihood``); batching is HFLM's
        ``_loglikelihood_tokens`` with its one-token-continuation logits sharing off (it would merge rows of
        different settings)."""
        from lm_eval.api.model import TemplateLM

        built = [build_setting(s.get("neurons"), s.get("lang"), s.get("mode"), s.get("value"), s.get("layers"),
                               len(self.sites), neuron_width(self.sites), ops=s.get("ops"), scope=s.get("scope"),
                               vectors=s.get("vectors"), hidden=hidden_size_of(self.model))
                 for s in settings]
        if any(b is None or b.per_request for b in built):
            raise LapeConfigError("prefill needs settings with neurons= and explicit languages (not self/src/tgt)")
        requests = [r for r in requests if r.request_type == "loglikelihood"]
        if not requests:
            return 0
        encoded: list = []
        self._loglikelihood_tokens = lambda reqs, **kw: encoded.extend(reqs) or [(0.0, False)] * len(reqs)
        try:
            TemplateLM.loglikelihood(self, requests, disable_tqdm=True)
        finally:
            del self._loglikelihood_tokens  # back to the class method
        unique = dict.fromkeys((tuple(strs), tuple(ctx), tuple(cont)) for strs, ctx, cont in encoded)
        rows = [((k, *strs), list(ctx), list(cont)) for k in range(len(built)) for strs, ctx, cont in unique]
        ivs = [b.intervention() for b in built]
        hook, cache, self.cache_hook = self.cache_hook, self.logits_cache, CacheHook(None)
        self.logits_cache = False
        try:
            with intervene(self.model, ivs, rows=[0], sites=self.sites) as session:
                with _taps(session, rows=True):
                    res = HFLM._loglikelihood_tokens(self, rows, disable_tqdm=False)
        finally:
            self.cache_hook, self.logits_cache = hook, cache
        salts = [json.dumps(self._cache_identity(b.route([None])[0][0], b), sort_keys=True) for b in built]
        for ((k, *args), _, _), r in zip(rows, res, strict=True):
            self._lape_memo[self._cache_key("loglikelihood", tuple(args), salts[k])] = r
        return len(rows)

    def clear_prefill(self) -> None:
        self._lape_memo = {}

    def set_cache_hook(self, cache_hook: CacheHook) -> None:
        """``--use_cache``: take over the CachingLM database so that answers are keyed per intervention.

        lm-eval's ``CachingLM`` keys entries on the request text only and hands its database to the model
        through this hook. The database is switched to a guarded class: lm-eval's own text-only lookups
        always miss and its writes are dropped, so every request reaches :meth:`_run`, which looks up and
        stores under ``sha256(request, model, intervention of that request)``. Lookups by CachingLM mark the
        database as in use for the next request call only, so a hook left on a reused instance after a
        cached run (docs/lm-eval-notes.md §6) never caches later uncached runs.

        Only lm-eval 0.4's sqlitedict ``SqliteDict`` is taken over. A hook onto any other backend (lm-eval
        0.5 replaces it with a JSON sqlite store) is refused with a one-line
        :class:`~lapeval.errors.LapevalWarning`: the model then runs uncached and writes nothing through the
        hook, rather than failing or storing answers under keys blind to the intervention.
        """
        unknown = _unknown_backend(cache_hook)
        if unknown:
            import warnings

            from .errors import LapevalWarning

            warnings.warn(f"lm-eval's request cache is a {unknown}, which lapeval cannot key per intervention: the "
                          "lape model runs without caching; give each intervention setting its own --use_cache "
                          "path (or drop --use_cache)", LapevalWarning, stacklevel=2)
            cache_hook = CacheHook(None)
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            _guard(db)
        self._lape_db = db
        super().set_cache_hook(cache_hook)


# ---- the mask against the loaded model ----------------------------------------------------------------
def neuron_width(sites) -> int:
    """The width a mask of this model has: the first site's d_ff (dense), the widest layer's (routed layers,
    padded to it: :func:`lapeval.moe.moe_meta`)."""
    return max(s.d_ff for s in sites) if is_expert_sites(sites) else sites[0].d_ff


def check_mask(mask, sites) -> None:
    """One-line MaskError unless ``mask`` fits the model's layers × width and, for a routed model, is a routed
    mask of the same layout (experts, d_expert and every layer's width): a dense mask never indexes experts."""
    from .masks import MaskError

    mask.check_model(len(sites), neuron_width(sites))
    routed = is_expert_sites(sites)
    if routed != mask.is_moe:
        src = f" ({mask.path})" if mask.path else ""
        kind = "a mixture-of-experts" if mask.is_moe else "a dense-FFN"
        raise MaskError(f"mask file{src} is {kind} mask but the model's FFNs are "
                        f"{'routed' if routed else 'dense'}: use a mask identified on this model (lapeval identify)")
    if routed:
        moe = mask.meta["moe"]
        have = (moe.get("layer_experts"), moe.get("d_expert"), moe.get("layer_d_ff"))
        want = ([s.n_experts for s in sites], max(s.d_expert for s in sites), [s.d_ff for s in sites])
        if have != want:
            raise MaskError(f"mask file ({mask.path}) records experts per layer {have[0]}, d_expert {have[1]}, layer "
                            f"widths {have[2]} but the model has {want[0]}, {want[1]}, {want[2]}: use a mask "
                            "identified on this model (lapeval identify)")


# ---- each task's own config, for lang=self ---------------------------------------------------------
# lm-eval requests (Instance) carry only their task's name, yet lang=self must read the task's own config
# (metadata.lapeval_language). The task objects are built by whoever called lm-eval (the CLI, simple_evaluate,
# evaluate with a loaded task dict, a grid, an --include_path override of a built-in task) and never reach
# the model. Looking a name up again through a TaskManager would cost a full index (10-25 s) and, worse,
# find lm-eval's built-in definition instead of the override actually evaluated. On every path, though,
# each task builds its requests with Task.build_all_requests (evaluator.py, and lapeval's grid prefill)
# right before they reach the model; wrapping that one method to note each task's metadata by name gives
# exactly the definition whose requests follow (a later definition of the same name replaces it).
TASK_METADATA: dict[str, dict] = {}


def _note_task(task) -> None:
    """Remember ``task``'s ``metadata.lapeval_language`` under its name (forget a name without one)."""
    try:
        name = task.task_name if hasattr(task, "task_name") else task.config.task
        meta = getattr(task.config, "metadata", None)
    except Exception:  # noqa: BLE001 - a task class lm-eval does not know: nothing to note
        return
    if not isinstance(name, str):
        return
    keys = ("lapeval_language", "lapeval_source_language", "lapeval_target_language")
    noted = {k: meta[k] for k in keys if isinstance(meta, dict) and meta.get(k) is not None}
    if not noted:
        TASK_METADATA.pop(name, None)
    else:
        TASK_METADATA[name] = noted


def _watch_tasks() -> None:
    """Wrap ``Task.build_all_requests`` once so that every task notes its metadata before its requests run."""
    from lm_eval.api.task import Task

    original = Task.build_all_requests
    if getattr(original, "_lapeval_notes_tasks", False):
        return

    @functools.wraps(original)
    def build_all_requests(self, *args, **kwargs):
        _note_task(self)
        return original(self, *args, **kwargs)

    build_all_requests._lapeval_notes_tasks = True
    Task.build_all_requests = build_all_requests


_watch_tasks()


# ---- the guarded cache database -------------------------------------------------------------------
_GUARDED: dict[type, type] = {}


def _unknown_backend(cache_hook) -> str | None:
    """None when ``cache_hook`` is one :meth:`LapeLM.set_cache_hook` knows: lm-eval's ``CacheHook`` onto
    nothing, or onto a sqlitedict ``SqliteDict`` (lm-eval 0.4's ``CachingLM``). Otherwise a description of
    what it caches into, for the warning."""
    db = getattr(cache_hook, "dbdict", None)
    if db is None:
        return None if isinstance(cache_hook, CacheHook) else f"{type(cache_hook).__qualname__} hook"
    try:
        from sqlitedict import SqliteDict
    except ImportError:  # an lm-eval release without sqlitedict
        SqliteDict = ()
    return None if isinstance(db, SqliteDict) else f"{type(db).__module__}.{type(db).__qualname__}"


def _guard(db) -> None:
    base = type(db)
    if getattr(base, "_lape_guarded", False):
        db._lape_looked_up = False
        return
    if base not in _GUARDED:
        def __contains__(self, key):
            self._lape_looked_up = True
            return False

        def __getitem__(self, key):
            raise KeyError(key)

        def __setitem__(self, key, value):
            return None

        _GUARDED[base] = type(f"LapeGuarded{base.__name__}", (base,), {
            "_lape_guarded": True, "_lape_base": base,
            "__contains__": __contains__, "__getitem__": __getitem__, "__setitem__": __setitem__,
        })
    db.__class__ = _GUARDED[base]
    db._lape_looked_up = False


def _db_has(db, key) -> bool:
    return db._lape_base.__contains__(db, key)


def _db_get(db, key):
    return db._lape_base.__getitem__(db, key)


def _db_set(db, key, value) -> None:
    db._lape_base.__setitem__(db, key, value)


# ---- what each batch row of a log-likelihood pass is -----------------------------------------------
@contextmanager
def _taps(session, rows: bool):
    """The taps a session needs: the padding tap (real lengths) for test-time statistics and scopes, the
    batch tap for scopes (continuation lengths) and for prefill passes (``rows``: each row's setting)."""
    if session is None:
        yield
        return
    pad = _padding_tap(session) if session.needs_stats or session.scoped else nullcontext()
    batch = _batch_tap(session, rows=rows, conts=session.scoped) if rows or session.scoped else nullcontext()
    with pad, batch:
        yield


@contextmanager
def _batch_tap(session, rows: bool, conts: bool):
    """While active, every log-likelihood batch HFLM's Collator hands out (items ``(key, context tokens,
    continuation tokens)``) tells ``session`` its rows' settings (``rows``: the first element of each
    prefill request's key) and continuation lengths (``conts``, for scopes). Generation batches (items
    ``(context, gen_kwargs)``) pass untouched."""
    original = _hf.Collator

    class TappedCollator(original):
        def get_batched(self, *args, **kwargs):
            for chunk in super().get_batched(*args, **kwargs):
                scored = bool(chunk) and all(isinstance(item, tuple) and len(item) == 3 for item in chunk)
                if scored and rows:
                    session.rows = [int(item[0][0]) for item in chunk]
                if scored and conts:
                    session.set_continuations([len(item[2]) for item in chunk])
                yield chunk

    _hf.Collator = TappedCollator
    try:
        yield
    finally:
        _hf.Collator = original


# ---- real lengths of right-padded log-likelihood rows ---------------------------------------------
@contextmanager
def _padding_tap(session):
    """While active, lm-eval's ``pad_and_concat`` (how HFLM right-pads a log-likelihood batch, with no
    attention mask) also tells ``session`` each row's real length, for per-row test-time statistics."""
    original = _hf.pad_and_concat

    def tapped(max_length, tensors, padding_side="right"):
        if padding_side == "right":
            session.set_lengths([int(t.shape[-1]) for t in tensors])
        return original(max_length, tensors, padding_side=padding_side)

    _hf.pad_and_concat = tapped
    try:
        yield
    finally:
        _hf.pad_and_concat = original
