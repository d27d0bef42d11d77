"""Streaming activation statistics per language (Tang et al. 2024 §1.3; Rahmanisa et al. 2025 §3.1).

For each language L and neuron (l, j), over the counted tokens of L's text:

* ``over_zero[L,l,j]`` = #{tokens t : a_{l,j}(t) > 0}   and   ``n_tokens[L]`` = #tokens counted,
  so that the activation probability is p_{l,j}(L) = over_zero / n_tokens;
* for the first K texts (default 100), each text's mean activation m_L^(k)[l,j] over its counted tokens,
  giving p_max = max_k m^(k), p_median = the lower median over k (as ``torch.median``), and
  p_min = min_k m^(k) (the "language-activated" baseline: neurons with m^(k) > 0 for every k);
* in the same pass, for DiffMean residual vectors (method.md §11), ``resid_sum[L,l]`` = Σ_t h^(l)(t) ∈ R^hidden,
  the float64 sum over L's counted tokens of decoder layer l's output (the residual stream), so that
  μ_L^(l) = resid_sum[L,l] / n_tokens[L] (:mod:`lapeval.identification.vectors`).

Counted tokens are the real tokens of the text: padding and the special tokens the tokenizer prepends
(BOS) are never counted. Texts longer than ``max_length`` are cut into consecutive chunks (each gets the
prefix again). The token budget is exact: the last chunk is truncated so that n_tokens = min(budget, all).

Only the decoder stack runs (no LM head). Memory does not grow with the corpus: texts are read, batched
and forgotten; the K per-text means are the only buffer. Under ``torchrun`` / ``accelerate launch`` the
chunk stream is split across ranks by index and all sums are all-reduced, so every rank ends with the
single-process result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from .. import __version__
from .._io import save_safetensors
from ..errors import InputFileError, LapevalError
from ..sites import Site, stack_of

FORMAT = "lapeval.activation_stats"


class StatsError(LapevalError, ValueError):
    """A statistics file or collection setting that cannot be used: one line naming the fix."""


@dataclass
class CollectConfig:
    max_tokens: int = 100_000  # counted tokens per language
    n_sentences: int = 100  # K: texts whose mean activations are kept
    max_length: int = 512  # tokens per sequence, prefix included
    batch_tokens: int = 8192  # padded tokens per forward
    batch_size: int = 64  # sequences per forward
    window: int = 512  # sequences sorted by length together

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in ("max_tokens", "n_sentences", "max_length")}


@dataclass
class LanguageStats:
    over_zero: torch.Tensor  # int64 [n_layers, d_ff]
    n_tokens: int
    sentence_means: torch.Tensor  # float32 [k, n_layers, d_ff], k <= K
    n_texts: int = 0
    resid_sum: torch.Tensor | None = None  # float64 [n_layers, hidden]: Σ over counted tokens of each layer's output
    routed: torch.Tensor | None = None  # int64 [n_layers, E]: counted tokens routed to expert e (routed models)

    def summary(self) -> dict[str, torch.Tensor]:
        """p_max, p_median (lower median), p_min over the kept texts (zeros if none)."""
        m = self.sentence_means
        if m.shape[0] == 0:
            z = torch.zeros_like(self.over_zero, dtype=torch.float32)
            return {"act_max": z, "act_median": z, "act_min": z}
        return {"act_max": m.max(0).values, "act_median": m.median(0).values, "act_min": m.min(0).values}


# ---- tokens -------------------------------------------------------------------------------------
def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before every text (e.g. ``[<bos>]``), found by encoding with and without."""
    probe = "a b"
    with_sp = tokenizer(probe)["input_ids"]
    without = tokenizer(probe, add_special_tokens=False)["input_ids"]
    n = len(with_sp) - len(without)
    if n > 0 and with_sp[n:] == without:
        return list(with_sp[:n])
    return []


def sequences(tokenizer, texts: Iterable[str], budget: int, max_length: int, chunk_texts: int = 256) -> Iterator[list[int]]:
    """Token sequences ``prefix + chunk`` to run, in text order, with exactly ``budget`` counted tokens
    (or all there are)."""
    prefix = special_prefix(tokenizer)
    room = max_length - len(prefix)
    if room <= 0:
        raise StatsError(f"max_length {max_length} leaves no room after the {len(prefix)} prefix tokens: raise --max-length")
    remaining = budget
    buf: list[str] = []

    def flush(batch: list[str]) -> Iterator[list[int]]:
        nonlocal remaining
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            for s in range(0, len(ids), room):
                piece = ids[s : s + room][:remaining]
                if not piece:
                    continue
                remaining -= len(piece)
                yield prefix + piece
                if remaining == 0:
                    return

    for text in texts:
        buf.append(text)
        if len(buf) == chunk_texts:
            yield from flush(buf)
            buf = []
            if remaining == 0:
                return
    if buf and remaining > 0:
        yield from flush(buf)


# ---- the recorder -------------------------------------------------------------------------------
class ActivationRecorder:
    """Forward hooks on the neuron sites accumulating over_zero and per-text mean activations.

    Before each forward, :meth:`set_batch` gives the counted-token mask ``[B, T]`` and, per row, the slot
    in the first-K buffer (or -1). Use as a context manager: hooks are always removed on exit.
    """

    def __init__(self, sites: list[Site], n_slots: int, layers=None, hidden: int | None = None):
        self.sites = sites
        self.n_slots = n_slots
        self.layers = list(layers or []) if hidden else []  # decoder layers: their outputs' sums (DiffMean)
        self.resid_sum = [torch.zeros(hidden, dtype=torch.float64, device=_device_of(m)) for m in self.layers]
        self.over_zero = [torch.zeros(s.d_ff, dtype=torch.int64, device=s.device) for s in sites]
        self.slot_means = [torch.zeros(n_slots, s.d_ff, dtype=torch.float32) for s in sites]
        self.slot_filled = torch.zeros(n_slots, dtype=torch.int64)
        self._handles: list = []

    def set_batch(self, counted: torch.Tensor, slots: torch.Tensor, device: torch.device | None = None) -> None:
        """``counted`` and ``slots`` on the CPU; everything the hooks need is moved to ``device`` here, with
        no host synchronisation (so on a GPU the next batch is prepared while this one runs)."""
        B, T = counted.shape
        self._shape = (B, T)
        dev = device or counted.device
        flat = counted.reshape(-1)
        self._uncounted = (~flat).nonzero().squeeze(1).to(dev, non_blocking=True)  # pads and prefix: few, subtracted
        if self.layers:
            self._counted = flat.to(torch.float32).to(dev, non_blocking=True)  # [B*T] weights of the residual sums
        rows = (slots >= 0).nonzero().squeeze(1)
        self._slot_ids = slots[rows]
        self._slot_rows = rows.to(dev, non_blocking=True)
        self._slot_mask = counted[rows].unsqueeze(-1).to(dev, non_blocking=True)  # [r, T, 1]
        self._slot_count = counted[rows].sum(1, keepdim=True).clamp(min=1).to(dev, non_blocking=True)  # [r, 1]
        if rows.numel():
            self.slot_filled[self._slot_ids] = 1

    def _hook(self, layer: int):
        def hook(module, inputs, out):
            d = out.shape[-1]
            a = out.reshape(-1, d)
            pos = (a > 0).sum(0)
            if self._uncounted.numel():
                pos -= (a.index_select(0, self._uncounted.to(a.device, non_blocking=True)) > 0).sum(0)
            self.over_zero[layer] += pos
            if self._slot_ids.numel():
                B, T = self._shape
                rows = a.reshape(B, T, d).index_select(0, self._slot_rows.to(a.device, non_blocking=True)).float()
                mask = self._slot_mask.to(a.device, non_blocking=True)
                means = (rows * mask).sum(1) / self._slot_count.to(a.device, non_blocking=True)
                self.slot_means[layer][self._slot_ids] = means.cpu()

        return hook

    def _resid_hook(self, layer: int):
        def hook(module, inputs, out):
            h = out[0] if isinstance(out, tuple) else out
            h2 = h.reshape(-1, h.shape[-1])
            h2 = h2 if h2.dtype == torch.float64 else h2.float()  # half precision summed in float32 per batch
            w = self._counted.to(h2.device, h2.dtype, non_blocking=True)
            self.resid_sum[layer] += (w @ h2).double()

        return hook

    def __enter__(self):
        self._handles = [s.module.register_forward_hook(self._hook(i)) for i, s in enumerate(self.sites)]
        self._handles += [m.register_forward_hook(self._resid_hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


# ---- distributed helpers -----------------------------------------------------------------------
def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if rank_world()[1] > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        x = t.to(dev)
        dist.all_reduce(x)
        return x.to(t.device)
    return t


def _prefetch(items: Iterable, depth: int = 4096) -> Iterator:
    """Yield ``items`` produced by a background thread (fast tokenizers release the GIL), in order; an
    exception in the producer is re-raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce():
        try:
            for x in items:
                if stop.is_set():
                    return
                q.put(x)
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    th = threading.Thread(target=produce, daemon=True)
    th.start()
    try:
        while True:
            x = q.get()
            if x is end:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        while th.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.01)


# ---- one language ------------------------------------------------------------------------------
def _batches(window: list[tuple[int, list[int]]], cfg: CollectConfig) -> Iterator[list[tuple[int, list[int]]]]:
    window = sorted(window, key=lambda x: -len(x[1]))
    batch: list[tuple[int, list[int]]] = []
    for item in window:
        longest = len(batch[0][1]) if batch else len(item[1])
        if batch and (len(batch) + 1 > cfg.batch_size or (len(batch) + 1) * longest > cfg.batch_tokens):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@torch.inference_mode()
def collect_language(model, tokenizer, texts: Iterable[str], cfg: CollectConfig, sites: list[Site] | None = None,
                     progress: str | None = None) -> LanguageStats:
    """Run the decoder stack over one language's texts and return its (all-reduced) statistics."""
    from tqdm.auto import tqdm

    from ..moe import find_neuron_sites, is_expert_sites

    sites = sites or find_neuron_sites(model)
    stack = stack_of(model)
    device = next(stack.parameters()).device
    rank, world = rank_world()
    prefix_len = len(special_prefix(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_tokens = 0
    n_seqs = 0
    bar = tqdm(total=cfg.max_tokens, unit="tok", desc=progress, disable=progress is None or rank != 0, leave=False)
    from ..sites import decoder_layers, hidden_size_of

    moe = is_expert_sites(sites)  # routed FFNs: neurons and means from the experts' hooks, residuals from rec
    rec = ActivationRecorder([] if moe else sites, cfg.n_sentences, decoder_layers(model)[1], hidden_size_of(model))
    experts = _expert_counter(sites, cfg.n_sentences) if moe else None

    def run(window: list[tuple[int, list[int]]]) -> None:
        nonlocal n_tokens
        for batch in _batches(window, cfg):
            T = len(batch[0][1])
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), T), dtype=torch.long)
            for r, (_, seq) in enumerate(batch):
                ids[r, : len(seq)] = torch.tensor(seq)
                attn[r, : len(seq)] = 1
            counted = attn.bool().clone()
            counted[:, :prefix_len] = False
            slots = torch.tensor([g if g < cfg.n_sentences else -1 for g, _ in batch])
            rec.set_batch(counted, slots, device)
            if experts is not None:
                experts.set_batch(counted, slots, device)
            stack(input_ids=ids.to(device, non_blocking=True), attention_mask=attn.to(device, non_blocking=True),
                  use_cache=False)
            c = int(counted.sum())
            n_tokens += c
            bar.update(c * world)

    with rec, (experts if experts is not None else contextlib.nullcontext()):
        window: list[tuple[int, list[int]]] = []
        seqs = sequences(tokenizer, texts, cfg.max_tokens, cfg.max_length)
        if device.type != "cpu":  # tokenise on the host while the accelerator runs the stack
            seqs = _prefetch(seqs)
        for g, seq in enumerate(seqs):
            n_seqs = g + 1
            if g % world != rank:
                continue
            window.append((g, seq))
            if len(window) == cfg.window:
                run(window)
                window = []
        if window:
            run(window)
    bar.close()
    routed = None
    if experts is None:
        over_zero = torch.stack([x.cpu() for x in rec.over_zero])
        means = torch.stack(rec.slot_means, dim=1)  # [K, n_layers, d_ff]
        filled = rec.slot_filled
    else:
        over_zero, means, routed = _padded(experts)
        routed = _all_reduce(routed)
        filled = experts.slot_filled
    over_zero = _all_reduce(over_zero)
    means = _all_reduce(means)
    filled = _all_reduce(filled.clone())
    n_tokens = int(_all_reduce(torch.tensor([n_tokens], dtype=torch.int64))[0])
    resid = _all_reduce(torch.stack([x.cpu() for x in rec.resid_sum])) if rec.resid_sum else None
    k = int(filled.sum())
    return LanguageStats(over_zero, n_tokens, means[:k].clone(), n_texts=n_seqs, resid_sum=resid, routed=routed)


def _expert_counter(sites, n_slots: int):
    from ..moe import ExpertActivationCounter

    return ExpertActivationCounter(sites, n_slots)


def _padded(counter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A routed model's per-layer counts as rectangles (:func:`lapeval.moe.moe_meta`): over_zero int64
    [n_layers, d_ff] and the means float32 [K, n_layers, d_ff], each layer padded at the end to the widest
    layer's d_ff with zeros (neurons that never fire); routed int64 [n_layers, E], a dense layer's row 0."""
    import torch.nn.functional as F

    d_ff = max(x.numel() for x in counter.over_zero)
    n_experts = max(x.numel() for x in counter.routed)
    over_zero = torch.stack([F.pad(x.cpu(), (0, d_ff - x.numel())) for x in counter.over_zero])
    means = torch.stack([F.pad(m, (0, d_ff - m.shape[1])) for m in counter.slot_means], dim=1)
    routed = torch.stack([F.pad(x.cpu(), (0, n_experts - x.numel())) for x in counter.routed])
    return over_zero, means, routed


# ---- files --------------------------------------------------------------------------------------
@dataclass
class Stats:
    """A STATS file: ``over_zero`` int64 [n_langs, n_layers, d_ff], ``n_tokens`` int64 [n_langs], and when
    per-text means were kept, ``act_max`` / ``act_median`` / ``act_min`` float32 [n_langs, n_layers, d_ff]
    and ``n_sentences`` int64 [n_langs]. Metadata: ``languages`` (JSON list, the row order) and ``lapeval``
    (JSON: model, site, corpus, settings).

    Routed (mixture-of-experts) models also hold ``routed`` int64 [n_langs, n_layers, E], the counted tokens
    whose top-k holds expert e, and the metadata key ``moe`` (:func:`lapeval.moe.moe_meta`: the flattening
    of (expert, j) into d_ff and each layer's real width; narrower layers are padded with neurons that never
    fire). Files without ``routed`` load as before."""

    languages: list[str]
    over_zero: torch.Tensor
    n_tokens: torch.Tensor
    act: dict[str, torch.Tensor] = field(default_factory=dict)
    n_sentences: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    resid_sum: torch.Tensor | None = None  # float64 [n_langs, n_layers, hidden] (files written before it: None)
    routed: torch.Tensor | None = None  # int64 [n_langs, n_layers, E]: routed models only (lapeval.moe)

    @property
    def n_layers(self) -> int:
        return self.over_zero.shape[1]

    @property
    def d_ff(self) -> int:
        return self.over_zero.shape[2]

    @classmethod
    def from_languages(cls, per_lang: dict[str, LanguageStats], meta: dict | None = None) -> "Stats":
        langs = list(per_lang)
        summaries = [per_lang[l].summary() for l in langs]
        act = {k: torch.stack([s[k] for s in summaries]) for k in ("act_max", "act_median", "act_min")}
        return cls(
            langs,
            torch.stack([per_lang[l].over_zero for l in langs]),
            torch.tensor([per_lang[l].n_tokens for l in langs], dtype=torch.int64),
            act,
            torch.tensor([per_lang[l].sentence_means.shape[0] for l in langs], dtype=torch.int64),
            dict(meta or {}),
            torch.stack([per_lang[l].resid_sum for l in langs])
            if all(per_lang[l].resid_sum is not None for l in langs) else None,
            torch.stack([per_lang[l].routed for l in langs])
            if all(per_lang[l].routed is not None for l in langs) else None,
        )

    def save(self, path: str | Path) -> Path:
        tensors = {"over_zero": self.over_zero.to(torch.int64).contiguous(), "n_tokens": self.n_tokens.to(torch.int64)}
        tensors.update({k: v.to(torch.float32).contiguous() for k, v in self.act.items()})
        if self.n_sentences is not None:
            tensors["n_sentences"] = self.n_sentences.to(torch.int64)
        if self.resid_sum is not None:
            tensors["resid_sum"] = self.resid_sum.to(torch.float64).contiguous()
        if self.routed is not None:
            tensors["routed"] = self.routed.to(torch.int64).contiguous()
        header = {"format": FORMAT, "languages": json.dumps(self.languages),
                  "lapeval": json.dumps({**self.meta, "lapeval_version": __version__}, ensure_ascii=False,
                                        sort_keys=True)}
        save_safetensors(tensors, path, header)  # byte-reproducible
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Stats":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"statistics file {path} does not exist: run lapeval collect first")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise StatsError(f"{path} is not a safetensors statistics file ({e})") from None
        if "over_zero" not in t or "n_tokens" not in t or "languages" not in header:
            raise StatsError(f"{path} lacks over_zero / n_tokens tensors or the 'languages' metadata key (see lapeval select --help)")
        try:
            langs = json.loads(header["languages"])
            meta = json.loads(header.get("lapeval", "{}"))
        except ValueError as e:
            raise StatsError(f"{path} is a corrupt statistics file: unreadable metadata ({str(e).splitlines()[0]}); "
                             "collect it again") from None
        if not (isinstance(langs, list) and langs and all(isinstance(l, str) for l in langs)) or not isinstance(meta, dict):
            raise StatsError(f"{path} is a corrupt statistics file: its 'languages' metadata is not a list of codes; collect it again")
        oz, n = t["over_zero"], t["n_tokens"]
        if oz.dim() != 3 or oz.shape[0] != len(langs) or n.shape != (len(langs),):
            raise StatsError(f"{path}: over_zero must be [n_langs, n_layers, d_ff] and n_tokens [n_langs] for {len(langs)} languages")
        if (n <= 0).any():
            empty = [l for l, c in zip(langs, n.tolist()) if c <= 0]
            raise StatsError(f"{path}: no tokens counted for {', '.join(empty)}: collect more text for them")
        if (oz < 0).any() or (oz > n.view(-1, 1, 1)).any():
            i = int(((oz < 0) | (oz > n.view(-1, 1, 1))).flatten(1).any(1).nonzero()[0])
            raise StatsError(f"{path}: over_zero of {langs[i]} lies outside 0..n_tokens ({int(n[i])}): a count of tokens "
                             "with activation > 0 cannot exceed the tokens counted; the file is corrupt, collect it again")
        act = {k: t[k] for k in ("act_max", "act_median", "act_min") if k in t}
        for k, v in act.items():
            if v.shape != oz.shape:
                raise StatsError(f"{path}: {k} must have over_zero's shape {list(oz.shape)} (has {list(v.shape)})")
        ns = t.get("n_sentences")
        if ns is not None and (ns.shape != n.shape or (ns < 0).any()):
            raise StatsError(f"{path}: n_sentences must be [n_langs] counts ≥ 0")
        resid = t.get("resid_sum")
        if resid is not None and (resid.dim() != 3 or resid.shape[:2] != oz.shape[:2] or not bool(torch.isfinite(resid).all())):
            raise StatsError(f"{path}: resid_sum must be finite [n_langs, n_layers, hidden] sums; collect it again")
        routed = t.get("routed")
        if routed is not None and (routed.dim() != 3 or routed.shape[:2] != oz.shape[:2] or routed.is_floating_point()
                                   or (routed < 0).any() or (routed > n.view(-1, 1, 1)).any()):
            raise StatsError(f"{path}: routed must be [n_langs, n_layers, experts] counts within 0..n_tokens; the "
                             "file is corrupt, collect it again")
        return cls(langs, oz.long(), n.long(), act, ns, meta, None if resid is None else resid.double(),
                   None if routed is None else routed.long())


# ---- many languages, resumable ------------------------------------------------------------------
def run_key(meta: dict, cfg: CollectConfig, corpus_state=None) -> str:
    """What one language's statistics depend on: the model and corpus provenance (``meta``), the counting
    settings, and ``corpus_state`` — what that language's text actually is (for local files their paths,
    sizes and modification times: an edited file is collected again)."""
    blob = json.dumps({"meta": meta, "cfg": cfg.key(), **({"corpus": corpus_state} if corpus_state else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _finished(out: Path, languages: list[str], keys: dict[str, str]) -> "Stats | None":
    """The STATS file ``out`` when it already holds exactly these languages with these run keys."""
    if not out.is_file():
        return None
    try:
        done = Stats.load(out)
    except LapevalError:
        return None
    return done if done.languages == list(languages) and done.meta.get("run_keys") == keys else None


def collect(model, tokenizer, languages: list[str], texts_of, out: str | Path, cfg: CollectConfig,
            meta: dict | None = None, progress: bool = True, log=print, sites: list[Site] | None = None,
            corpus_state=None) -> Stats:
    """Collect every language into the STATS file ``out``. Each finished language is kept in
    ``<out>.parts/<lang>.safetensors`` under its run key (:func:`run_key`; ``corpus_state(lang)`` describes
    its text); a rerun with the same settings and text skips those (resume), and a finished ``out`` with the
    same keys is returned as it is. A language whose text is shorter than ``max_tokens`` (or has fewer
    texts than ``n_sentences``) is counted on what there is, with a one-line warning."""
    import warnings

    from ..errors import LapevalWarning

    out = Path(out)
    meta = dict(meta or {})
    keys = {lang: run_key(meta, cfg, corpus_state(lang) if corpus_state else None) for lang in languages}
    rank, world = rank_world()
    done = _finished(out, languages, keys)
    if done is not None:
        if rank == 0:
            log(f"lapeval collect: {out} already holds {', '.join(languages)} with these settings, reusing it")
        return done
    parts = parts_dir(out)
    if not sites:
        from ..moe import find_neuron_sites

        sites = find_neuron_sites(model)
    per_lang: dict[str, LanguageStats] = {}
    for i, lang in enumerate(languages):
        part = parts / f"{lang}.safetensors"
        done = _load_part(part, keys[lang])
        if done is not None:
            if rank == 0:
                log(f"lapeval collect: {lang} already collected ({done.n_tokens} tokens), reusing {part}")
            per_lang[lang] = done
            continue
        st = collect_language(model, tokenizer, texts_of(lang), cfg, sites,
                              progress=f"[{i + 1}/{len(languages)}] {lang}" if progress else None)
        if st.n_tokens == 0:
            raise StatsError(f"no text found for {lang}: check the corpus spec")
        if rank == 0:
            if st.n_tokens < cfg.max_tokens:
                warnings.warn(f"{lang}: the corpus holds only {st.n_tokens} tokens, fewer than --max-tokens "
                              f"{cfg.max_tokens}: its activation probabilities rest on {st.n_tokens} tokens", LapevalWarning)
            k = st.sentence_means.shape[0]
            if 0 < k < cfg.n_sentences:
                warnings.warn(f"{lang}: only {k} texts for p_max / p_median, fewer than --n-sentences "
                              f"{cfg.n_sentences}", LapevalWarning)
            _save_part(part, st, keys[lang])
            log(f"lapeval collect: {lang}: {st.n_tokens} tokens, {st.n_texts} sequences")
        per_lang[lang] = st
    meta["n_tokens"] = {l: s.n_tokens for l, s in per_lang.items()}
    meta["collect"] = cfg.key()
    meta["run_keys"] = keys
    stats = Stats.from_languages(per_lang, meta)
    if rank == 0:
        stats.save(out)
        for lang in languages:
            (parts / f"{lang}.safetensors").unlink(missing_ok=True)
        if parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
    if world > 1:
        dist.barrier()
    return stats


def _save_part(path: Path, st: LanguageStats, key: str) -> None:
    tensors = {"over_zero": st.over_zero.contiguous(), "n_tokens": torch.tensor([st.n_tokens]),
               "sentence_means": st.sentence_means.contiguous(), "n_texts": torch.tensor([st.n_texts])}
    if st.resid_sum is not None:
        tensors["resid_sum"] = st.resid_sum.contiguous()
    if st.routed is not None:
        tensors["routed"] = st.routed.contiguous()
    save_safetensors(tensors, path, {"run_key": key})


def _load_part(path: Path, key: str) -> LanguageStats | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("run_key") != key:
                return None
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        return None
    return LanguageStats(t["over_zero"], int(t["n_tokens"][0]), t["sentence_means"], int(t["n_texts"][0]),
                         t.get("resid_sum"), t.get("routed"))
