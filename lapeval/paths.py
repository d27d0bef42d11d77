"""Where lapeval's own files are: in the installed wheel or in a source checkout — answered here only.

The wheel carries ``lapeval/tasks`` (the task YAMLs, force-included from the checkout's ``tasks/``),
``lapeval/data`` (bundled text and facts) and, when packaged, ``lapeval/neuron_masks``. A checkout has
``tasks/`` and ``neuron_masks/`` beside the ``lapeval`` package. Every lookup tries the package first, then
the checkout.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputFileError

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
DATA_DIR = PACKAGE / "data"
FACTS_DIR = DATA_DIR / "mlama"  # lapeval's own parallel facts, in the MLAMA-dod-185 layout
DEMO_TEXT = DATA_DIR / "demo_text"  # project-written parallel sentences, one file per language
STEER_PROMPTS = DATA_DIR / "steer_prompts.jsonl"


def resource(name: str) -> Path:
    """``lapeval/<name>`` in the installed package if it exists, else ``<checkout>/<name>`` (which may not
    exist: callers say what is missing)."""
    installed = PACKAGE / name
    return installed if installed.exists() else CHECKOUT / name


def tasks_path() -> Path:
    """The folder of lapeval's lm-eval task YAMLs, for ``--include_path`` or ``TaskManager(include_path=...)``.

    Example::

        from lm_eval.tasks import TaskManager
        tm = TaskManager(include_path=str(lapeval.tasks_path()))
    """
    return resource("tasks")


def masks_dir() -> Path:
    """The folder of the masks shipped with lapeval (``neuron_masks/``)."""
    return resource("neuron_masks")


def committed_mask(name: str = "gemma-3-270m") -> Path:
    """The mask file shipped for model ``name`` (``neuron_masks/<name>.safetensors``)."""
    path = masks_dir() / f"{name}.safetensors"
    if not path.is_file():
        raise InputFileError(f"no committed mask {name}.safetensors in {masks_dir()}: pass a mask file "
                             f"(--mask / neurons=) or identify one with lapeval identify")
    return path


def bundled_corpus() -> str:
    """A ``--corpus`` spec for the bundled demo text (``files:<data>/demo_text/{lang}.txt``; 120 parallel
    sentences in each of 12 languages): enough for a quick identification, offline."""
    return f"files:{DEMO_TEXT}/{{lang}}.txt"
