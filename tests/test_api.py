"""The public Python API: lazy top-level names, the README snippet on the real model, one spelling per
concept, the layering of the modules, and the CLI's error boundary."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, random_mask, require_shared

import lapeval

API = ["identify", "collect", "select", "NeuronMask", "Operation", "Intervention", "intervene", "LapeLM",
       "lss_matrix", "search_factor", "GridConfig", "run_grid", "check", "tasks_path",
       "lss_score", "write_summary", "import_reference", "export_reference", "prepare"]


def test_import_lapeval_loads_neither_torch_nor_lm_eval():
    code = ("import sys, lapeval; heavy = [m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules]; "
            "print(heavy); lapeval.tasks_path(); lapeval.Operation; lapeval.GridConfig; "
            "print([m for m in ('torch', 'lm_eval') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]  # neither on import, nor for the pure parts of the API


def test_every_public_name_resolves_and_is_documented():
    for name in API:
        obj = getattr(lapeval, name)
        target = obj
        assert (target.__doc__ or "").strip(), name
        assert "Example" in (target.__doc__ or "") or name in ("NeuronMask", "Operation", "Intervention", "LapeLM",
                                                                "GridConfig", "run_grid", "intervene"), name
    assert set(API) <= set(dir(lapeval)) and callable(lapeval.check) and callable(lapeval.intervene)
    with pytest.raises(AttributeError):
        lapeval.no_such_name


def test_api_keywords_match_the_cli_flags():
    """Same names and defaults as the flags: every option of identify / lss matrix / search-factor is a
    keyword of the function, with the flag's default."""
    import inspect

    from lapeval.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def child(cmd: str, dest: str, name: str):
        return next(a for a in sub[cmd]._actions if a.dest == dest).choices[name]

    pairs = [(sub["identify"], lapeval.identify, {"no_progress", "plot", "stats_out"}),
             (sub["collect"], lapeval.collect, {"no_progress"}),
             (child("lss", "lss_command", "matrix"), lapeval.lss_matrix, {"model", "neurons", "languages", "out"}),
             (child("lss", "lss_command", "score"), lapeval.lss_score, set()),
             (sub["search-factor"], lapeval.search_factor, {"model", "neurons", "languages"}),
             (child("masks", "masks_command", "import"), lapeval.import_reference, set()),
             (child("masks", "masks_command", "export"), lapeval.export_reference, set()),
             (child("models", "models_command", "prepare"), lapeval.prepare, set())]
    grid = sub["grid"]  # grid --summary-only --output OUT is write_summary(output)
    assert "output" in inspect.signature(lapeval.write_summary).parameters and any(
        a.dest == "output" for a in grid._actions) and any(a.dest == "summary_only" for a in grid._actions)
    for parser, fn, positional in pairs:
        params = inspect.signature(fn).parameters
        for action in parser._actions:
            if action.dest in ("help",) or action.dest in positional:
                continue
            name = {"languages": "sources"}.get(action.dest, action.dest) if fn is lapeval.lss_matrix else action.dest
            assert name in params, (fn.__name__, action.dest)
            default = params[name].default
            if default is not inspect.Parameter.empty and action.default is not None:
                assert default == action.default, (fn.__name__, action.dest, default, action.default)


# ---- layering ------------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_library_never_imports_the_cli():
    offenders = []
    for path in sorted((ROOT / "lapeval").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "lapeval/cli.py" or rel.startswith("lapeval/commands/") or rel == "lapeval/__main__.py":
            continue
        bad = {m for m in _imports(path) if m.startswith(("lapeval.commands", "lapeval.cli"))}
        if bad:
            offenders.append((rel, sorted(bad)))
    assert offenders == []
    grep = subprocess.run(["grep", "-rn", r"from \.commands\|from \.\.commands\|from \.cli\|from \.\.cli", "lapeval",
                           "--include=*.py"], capture_output=True, text=True, cwd=ROOT).stdout
    assert [l for l in grep.splitlines() if not l.startswith(("lapeval/cli.py", "lapeval/commands/", "lapeval/__main__.py"))] == []


# ---- one spelling per concept ------------------------------------------------------------------------
@pytest.mark.parametrize("spec, label, folder", [
    ("zero", "zero", "zero"),
    ("set:p_max", "set:p_max", "set=p_max"),
    ("set=p_max", "set:p_max", "set=p_max"),
    ("SCALE:2.0@0-1", "scale:2@0-1", "scale=2@0-1"),
    ({"mode": "add", "value": "tt_max", "layers": "1+0"}, "add:tt_max@0-1", "add=tt_max@0-1"),
    ("zero@1", "zero@1", "zero@1"),
    (("scale", 0.5), "scale:0.5", "scale=0.5"),
])
def test_one_parser_and_one_label_for_an_intervention(spec, label, folder, tmp_path):
    from lapeval.grid.config import GridConfig, canonical_cell_id
    from lapeval.intervention.operation import file_name, parse_ops, parse_spec
    from lapeval.intervention.setting import build_setting
    from lapeval.lss import factor

    assert parse_ops(spec).label == label and file_name(label) == folder
    op, layers = parse_spec(spec)
    mask = random_mask(tmp_path / "m.safetensors")
    cfg = GridConfig(model="m", tasks=["lss_en"], neurons=str(mask), targets=["fr"], interventions=[spec])
    cell = cfg.cells()[1]
    assert cell.id == f"{label}/fr" and cell.folder == f"{folder}__fr"
    assert canonical_cell_id(f"{folder}/fr") == cell.id  # a cell id as grids wrote it before
    if layers is None:
        assert factor.parse_candidate(spec).label == label
    setting = build_setting(str(mask), "fr", op.mode, op.value, layers)
    assert setting.label == label and setting.describe()["label"] == label


def test_grid_config_built_in_python_is_normalised_like_yaml(tmp_path):
    from lapeval.grid.config import GridConfig, GridError

    mask = random_mask(tmp_path / "m.safetensors")
    cfg = GridConfig(model="m", tasks="lss_en, lss_fr", neurons=str(mask), targets=["French", "ja"],
                     interventions=["zero", "set:p_max@1"], limit=20.0, model_args="dtype=float32")
    assert cfg.targets == ["fr", "ja"] and cfg.tasks == ["lss_en", "lss_fr"] and cfg.limit == 20
    assert cfg.model_args == {"dtype": "float32"}
    assert [c.id for c in cfg.cells()] == ["baseline", "zero/fr", "zero/ja", "set:p_max@1/fr", "set:p_max@1/ja"]
    assert GridConfig.from_dict({"model": "m", "tasks": ["lss_en"], "neurons": str(mask), "targets": "French",
                                 "interventions": "zero"}).cells() == GridConfig(
        model="m", tasks=["lss_en"], neurons=str(mask), targets=["fr"], interventions=["zero"]).cells()
    for bad, match in [(dict(interventions=3), "interventions"), (dict(targets=5), "targets"),
                       (dict(limit="ten"), "limit"), (dict(seed="abc"), "seed"), (dict(model_args=["a", "b"]), "model_args"),
                       (dict(interventions=["boost:2"]), "unknown mode 'boost'")]:
        with pytest.raises(GridError, match=match):
            GridConfig(**{"model": "m", "tasks": ["lss_en"], "neurons": str(mask), **bad})


def test_layer_labels_are_canonical():
    from lapeval.intervention.operation import layers_label

    assert layers_label("17+10-12") == "10-12+17" and layers_label([3, 1, 2]) == "1-3" and layers_label("all") is None


def test_one_language_splitter():
    from lapeval.languages import parse_list, split_list

    assert split_list("en+zh") == split_list("en,zh") == split_list("en zh") == split_list(["en", " zh"]) == ["en", "zh"]
    assert parse_list("English+jp") == ["en", "ja"]


def test_one_reader_of_metric_entries():
    from lapeval.gate import flatten
    from lapeval.results import metric_entries

    entry = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": float("nan"), "ppl,none": 3.0,
             "ppl_stderr,none": "N/A", "bleu,none": 10.0, "bleu_stderr,none": 0.5, "flag,none": True}
    want = {("acc", "none"): (0.5, None), ("ppl", "none"): (3.0, None), ("bleu", "none"): (10.0, 0.5)}
    assert metric_entries(entry) == want
    assert flatten({"t": entry}) == {("", "t", m, f): v for (m, f), v in want.items()}


def test_check_matches_a_reference_written_with_the_old_cell_labels(tmp_path):
    summary = {"format": "lapeval.grid_summary", "results": {"set=p_max/fr": {"lss_en": {"lss,none": 0.5}}}}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(summary))
    new.write_text(json.dumps({**summary, "results": {"set:p_max/fr": {"lss_en": {"lss,none": 0.5}}}}))
    cmp = lapeval.check(new, old)
    assert cmp.passed and [r.cell for r in cmp.rows] == ["set=p_max/fr"] and not cmp.only_in_results


# ---- errors ----------------------------------------------------------------------------------------
def test_every_user_error_class_is_a_lapeval_error():
    from lapeval import gate, masks, results, sites, taskdata
    from lapeval.errors import LapevalError
    from lapeval.grid import config as grid
    from lapeval.identification import corpus, stats
    from lapeval.intervention import operation, setting
    from lapeval.lss import factor

    for cls in (gate.CheckError, corpus.CorpusError, factor.CandidateError, grid.GridError, masks.MaskError,
                operation.InterventionError, results.ResultsError, setting.LapeConfigError, sites.UnsupportedModelError,
                stats.StatsError, taskdata.LocalDataError):
        assert issubclass(cls, LapevalError), cls


def test_cli_prints_user_errors_in_one_line_and_bugs_with_their_traceback(tmp_path, monkeypatch, capsys):
    from lapeval import cli

    assert cli.main(["masks", "show", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err

    def bug(args):
        raise ValueError("an internal inconsistency")  # a plain ValueError is a bug, not the user's input

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), bug))
    with pytest.raises(ValueError, match="internal inconsistency"):
        cli.main(["masks", "show", "x"])


def _with_handler(parser, handler):
    sub = next(a for a in parser._actions if a.dest == "command").choices["masks"]
    next(a for a in sub._actions if a.dest == "masks_command").choices["show"].set_defaults(handler=handler)
    return parser


# ---- the README snippet, on the real model ----------------------------------------------------------------
def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", text, re.S)
    assert m, "README has no Python API example between <!-- api-example --> markers"
    return m.group(1)


@pytest.mark.real
def test_readme_python_api_snippet_runs_on_the_real_model(tmp_path, monkeypatch, real_model_dir, capsys):
    flores = require_shared("flores200_devtest")
    monkeypatch.setenv("LAPEVAL_FLORES_DIR", str(flores))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_snippet(), "README.md[api-example]", "exec"), scope)
    mask, lm, res, lss = scope["mask"], scope["lm"], scope["res"], scope["lss"]
    # identification on the bundled text: a saved mask of the real model's shape, some neurons per language
    assert (tmp_path / "out/api/mask.safetensors").is_file() and (mask.n_layers, mask.d_ff) == (18, 2048)
    assert all(mask.summary()["per_language"][l]["total"] > 0 for l in ("en", "fr", "zh"))
    # the amplification ran inside lm-eval and is recorded
    lape = res["config"]["lape"]["intervention"]
    assert lape["label"] == "set:p_max" and lape["languages"] == ["fr"] and lape["neurons_sha256"] == mask.sha256()
    ppl = res["results"]["flores_ppl_fr"]["word_perplexity,none"]
    assert ppl > 1.0
    # the LSS matrix: every off-diagonal cell a share; the model's own setting is back afterwards
    assert set(lss["matrix"]) == {"en", "fr", "zh"} and all(0.0 <= v <= 1.0 for r in lss["matrix"].values() for v in r.values())
    assert lss["n_items"] == {"en": 10, "fr": 10, "zh": 10} and lss["neurons_sha256"] == mask.sha256()
    assert lm.intervention is not None and lm.intervention.lang == ("fr",)
    printed = capsys.readouterr().out.split()
    assert float(printed[-2]) == ppl and float(printed[-1]) == lss["mean_off_diagonal"]
