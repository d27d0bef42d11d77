"""``lang=self`` on lm-eval's own multilingual tasks (tiny random model, offline): lm-eval's Belebele, XNLI and
XStoryCloze definitions run on a few local rows in their datasets' schemas (``tests/data/``), selected by
lm-eval's group names. Requests of a language the mask holds get that language's neurons (their scores
change, and equal an explicit ``lang=`` run); the others run unmodified (identical to no intervention) and
are counted per task in ``config.lape``. The task's own ``metadata.lapeval_language`` and ``lang_map=`` are
honoured, from Python and from the ``lapeval eval`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, random_mask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = ROOT / "tests" / "data"
MASK_LANGS = ("en", "fr", "id")
# lm-eval group → {its subtask: fixture file}; sw is in no mask here
FIXTURES = {
    "belebele": {"belebele_fra_Latn": "belebele/fra_Latn.jsonl", "belebele_ind_Latn": "belebele/ind_Latn.jsonl",
                 "belebele_swh_Latn": "belebele/swh_Latn.jsonl"},
    "xnli": {"xnli_en": "xnli/en.jsonl", "xnli_fr": "xnli/fr.jsonl", "xnli_sw": "xnli/sw.jsonl"},
    "xstorycloze": {"xstorycloze_en": "xstorycloze/en.jsonl", "xstorycloze_id": "xstorycloze/id.jsonl",
                    "xstorycloze_sw": "xstorycloze/sw.jsonl"},
}
SPLITS = {"belebele": ["test"], "xnli": ["train", "validation"], "xstorycloze": ["train", "eval"]}  # as lm-eval names them
CHOICES = {"belebele": 4, "xnli": 3, "xstorycloze": 2}
LANGUAGE = {"belebele_fra_Latn": "fr", "belebele_ind_Latn": "id", "belebele_swh_Latn": "sw", "xnli_en": "en",
            "xnli_fr": "fr", "xnli_sw": "sw", "xstorycloze_en": "en", "xstorycloze_id": "id", "xstorycloze_sw": "sw"}


def _member(task: str, path: Path, splits: list[str], extra: str = "") -> str:
    files = "".join(f"        {s}: {path}\n" for s in splits)
    return (f"  - task: {task}\n    dataset_path: json\n    dataset_name: null\n    dataset_kwargs:\n"
            f"      data_files:\n{files}{extra}")


def override_dir(root: Path) -> Path:
    """lm-eval groups of the same names (``belebele``, ``xnli``, ``xstorycloze``) over lm-eval's own
    subtask definitions, the data source alone overridden to the local rows."""
    root.mkdir(parents=True, exist_ok=True)
    for group, members in FIXTURES.items():
        body = "".join(_member(t, DATA / f, SPLITS[group]) for t, f in members.items())
        (root / f"{group}.yaml").write_text(f"group: {group}\ntask:\n{body}", encoding="utf-8")
    return root


def subset(root: Path, name: str, tasks: list[str], extra: str = "") -> Path:
    """A folder with one group ``name`` over the fixture subtasks ``tasks`` (``extra``: more YAML per member)."""
    root.mkdir(parents=True, exist_ok=True)
    group_of = {t: g for g, members in FIXTURES.items() for t in members}
    body = "".join(_member(t, DATA / FIXTURES[group_of[t]][t], SPLITS[group_of[t]], extra) for t in tasks)
    (root / f"{name}.yaml").write_text(f"group: {name}\ntask:\n{body}", encoding="utf-8")
    return root


def _manager(folder: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=[*_builtin_dirs(), str(folder)])


def _builtin_dirs() -> list[str]:
    import lm_eval.tasks

    base = Path(lm_eval.tasks.__file__).parent
    return [str(base / g) for g in FIXTURES]


@pytest.fixture(scope="module")
def mask(tmp_path_factory) -> Path:
    return random_mask(tmp_path_factory.mktemp("mask") / "m.safetensors", langs=MASK_LANGS)


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> Path:
    return override_dir(tmp_path_factory.mktemp("lm_eval_overrides"))


@pytest.fixture(scope="module")
def tm(overrides):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=[*_builtin_dirs(), str(overrides)])


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from lapeval.lm import LapeLM

    return LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=1)


def _run(lm, tm, tasks) -> dict:
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True, bootstrap_iters=0,
                           verbosity="ERROR")


def _scores(res: dict) -> dict[str, dict[int, list]]:
    """Per task, per document: the log-likelihood of every choice."""
    return {t: {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in rows} for t, rows in res["samples"].items()}


@pytest.fixture(scope="module")
def runs(lm, tm, mask):
    lm.clear_intervention()
    base = _run(lm, tm, list(FIXTURES))
    lm.set_intervention(neurons=str(mask), lang="self", mode="set", value="p_max")
    routed = _run(lm, tm, list(FIXTURES))
    lm.clear_intervention()
    return base, routed


def test_lm_evals_groups_run_on_the_fixtures(runs):
    base, routed = runs
    for res in runs:
        assert set(res["samples"]) == set(LANGUAGE)
        for task in LANGUAGE:
            assert len(res["samples"][task]) == 4
            assert len(res["samples"][task][0]["resps"]) == CHOICES[task.split("_")[0]]
    assert base["config"]["lape"]["intervention"] is None


def test_in_mask_requests_change_out_of_mask_ones_are_hf(runs):
    base, routed = map(_scores, runs)
    for task, lang in LANGUAGE.items():
        if lang in MASK_LANGS:
            assert routed[task] != base[task], task  # that language's neurons were set
        else:
            assert routed[task] == base[task], task  # exactly no intervention


def test_unmodified_requests_are_reported_per_task(runs):
    iv = runs[1]["config"]["lape"]["intervention"]
    assert iv["lang"] == "self" and iv["languages"] == ["en", "fr", "id"]
    assert iv["unmodified"] == {
        "belebele_swh_Latn": {"requests": 4 * 4, "reason": "sw not in mask"},
        "xnli_sw": {"requests": 4 * 3, "reason": "sw not in mask"},
        "xstorycloze_sw": {"requests": 4 * 2, "reason": "sw not in mask"},
    }


def test_in_mask_requests_get_their_own_languages_neurons(lm, mask, runs, tmp_path):
    routed = _scores(runs[1])
    for code, tasks in (("fr", ["belebele_fra_Latn", "xnli_fr"]), ("id", ["xstorycloze_id", "belebele_ind_Latn"])):
        tm_one = _manager(subset(tmp_path / code, f"lapeval_only_{code}", tasks))
        lm.set_intervention(neurons=str(mask), lang=code, mode="set", value="p_max")
        alone = _scores(_run(lm, tm_one, [f"lapeval_only_{code}"]))
        assert {t: routed[t] for t in tasks} == alone, code
    lm.clear_intervention()


def test_task_metadata_and_lang_map_route(lm, tmp_path, mask):
    """A task of an --include_path override that declares ``metadata.lapeval_language`` is routed by it (lm-eval
    requests carry only the task's name: LapeLM notes each task's metadata as it builds its requests); a
    ``lang_map`` routes a task whose language the mask lacks to one it has."""
    extra = "    metadata:\n      version: 1.0\n      lapeval_language: fr\n"
    tm_tagged = _manager(subset(tmp_path / "tagged", "lapeval_tagged_xnli", ["xnli_sw"], extra))
    lm.set_intervention(neurons=str(mask), lang="self", mode="set", value="p_max")
    by_metadata = _run(lm, tm_tagged, ["lapeval_tagged_xnli"])
    assert by_metadata["config"]["lape"]["intervention"]["unmodified"] == {}
    lm.set_intervention(neurons=str(mask), lang="fr", mode="set", value="p_max")
    as_fr = _run(lm, tm_tagged, ["lapeval_tagged_xnli"])
    assert _scores(by_metadata) == _scores(as_fr)

    tm_plain = _manager(subset(tmp_path / "plain", "lapeval_plain_xnli", ["xnli_sw"]))
    lm.set_intervention(neurons=str(mask), lang="self", mode="set", value="p_max", lang_map="xnli_sw:id")
    mapped = _run(lm, tm_plain, ["lapeval_plain_xnli"])
    iv = mapped["config"]["lape"]["intervention"]
    assert iv["unmodified"] == {} and iv["lang_map"] == {"xnli_sw": "id"} and iv["languages"] == ["id"]
    lm.set_intervention(neurons=str(mask), lang="id", mode="set", value="p_max")
    assert _scores(mapped) == _scores(_run(lm, tm_plain, ["lapeval_plain_xnli"]))
    lm.clear_intervention()


def test_lapeval_eval_command_with_lm_evals_group_names(tmp_path, tiny_model_dir, mask, overrides):
    """The command line: ``--tasks belebele,xnli,xstorycloze`` (lm-eval's own names, the whole built-in index
    plus the override folder), ``lang=self`` and a ``lang_map`` model argument in its ``;`` form."""
    out = tmp_path / "out"
    args = ["eval", "--model", "lape", "--model_args",
            f"pretrained={tiny_model_dir},neurons={mask},lang=self,mode=set,value=p_max,lang_map=xnli_sw:fr;xnli_en:none",
            "--tasks", "belebele,xnli,xstorycloze", "--include_path", str(overrides), "--device", "cpu",
            "--batch_size", "4", "--output_path", str(out)]
    r = subprocess.run([sys.executable, "-m", "lapeval", *args], capture_output=True, text=True, cwd=tmp_path,
                       timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(out.rglob("results_*.json")).read_text())
    iv = res["config"]["lape"]["intervention"]
    assert set(res["results"]) >= set(LANGUAGE)
    assert iv["lang_map"] == {"xnli_sw": "fr", "xnli_en": None} and iv["languages"] == ["en", "fr", "id"]
    assert {t: v["requests"] for t, v in iv["unmodified"].items()} == {
        "belebele_swh_Latn": 16, "xstorycloze_sw": 8, "xnli_en": 12}
    assert iv["unmodified"]["xnli_en"]["reason"].startswith("no language known for this task (lang_map says none)")


def test_grid_self_cross_tables_on_lm_evals_tasks(tmp_path, tiny_model_dir, mask, overrides, lm):
    """A grid over lm-eval's own Belebele and XNLI: the summary's tables have one column per language, the
    diagonal (target = the column's language) is self-language, the rest cross-language."""
    from lapeval.grid.config import GridConfig
    from lapeval.grid.run import run_grid

    cfg = GridConfig(model=str(tiny_model_dir), tasks=["belebele", "xnli"], targets=["fr", "id"], neurons=str(mask),
                     interventions=["set:p_max"], include_path=[*_builtin_dirs(), str(overrides)],
                     output=str(tmp_path / "grid"), batch_size=1, bootstrap_iters=0, ci_resamples=20, multiplex="off")
    run_grid(cfg, log=lambda m: None, lm=lm)
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text(encoding="utf-8"))
    tables = {t["family"]: t for t in summary["tables"] if t["metric"] == "acc"}
    bele, xnli = tables["belebele"], tables["xnli"]
    assert dict(zip(bele["columns"], bele["column_languages"])) == {"fra_Latn": "fr", "ind_Latn": "id", "swh_Latn": "sw"}
    assert dict(zip(xnli["columns"], xnli["column_languages"])) == {"en": "en", "fr": "fr", "sw": "sw"}
    assert (bele["n_self"], bele["n_cross"]) == (2, 4) and (xnli["n_self"], xnli["n_cross"]) == (1, 5)
    selfs = {(r["target"], r["task"]) for r in summary["rows"] if r["self"]}
    assert selfs == {("fr", "belebele_fra_Latn"), ("id", "belebele_ind_Latn"), ("fr", "xnli_fr")}
