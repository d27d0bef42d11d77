"""The README's shell examples stay true.

Every ``lapeval`` / ``lm_eval`` command in a fenced block of README.md (``bash``, ``console`` prompts,
GitHub Actions ``run:`` steps of ``yaml`` blocks, ``$(...)`` substitutions and ``--wrap '...'`` strings
included) must name a real (sub)command and only flags its parser defines (spelled exactly, no
abbreviations), read committed inputs that exist, and write only under the git-ignored ``out/``. The cheap
ones are run as written from the repository root, offline; the others run ``<command> --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lapeval.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the venv this test runs in (the README's `.venv/bin/...`)
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
PROGRAMS = {"lapeval": "lapeval", "lm_eval": "lm_eval", "lm-eval": "lm_eval"}
SUBST = "__SUBST__"  # what a $(...) becomes inside the command that contains it
# a repo-relative path into committed folders (not the tail of another path, e.g. out/masks/...)
COMMITTED = re.compile(r"(?<![\w./-])(?:neuron_masks|docs|tasks|benchmarks|lapeval)/[^\s,;'\"]*")
RUN_OUTPUT = re.compile(r"(?<![\w./-])out/")  # a path under out/: something an earlier run wrote
OUTPUT_FLAGS = {"--out", "--output", "--output_path", "-o", "--stats-out", "--json"}
COMMITTED_DIRS = ("neuron_masks", "docs", "tasks")

# (sub)commands cheap enough to run here (seconds, no model); the rest run --help
CHEAP = {("models", "list"), ("tasks-path",), ("masks", "show"), ("masks", "plot"), ("masks", "export"),
         ("lss", "facts-dir"), ("lss", "score"), ("lss", "tasks"), ("check",)}
# commands that, without --out, write beside their input (the committed mask)
WRITES_BESIDE_INPUT = {("masks", "plot"), ("search-factor",)}
# commands the README must keep in a runnable form (so the parser cannot silently find nothing)
MUST_RUN = (
    "lapeval models list",
    "lapeval tasks-path",
    "lapeval lss facts-dir",
    "lapeval masks show neuron_masks/gemma-3-270m.safetensors",
    "lapeval masks show neuron_masks/gemma-3-270m.safetensors --json",
    "lapeval lss score --baseline docs/grid-example/out/cells/baseline",
    "lapeval check docs/grid-example/out --against docs/grid-example/out/summary.json",
)
MIN_COMMANDS = 30


# ---- reading the README ------------------------------------------------------------------------------

@dataclass
class Command:
    """One ``lapeval`` / ``lm_eval`` call: where it is, the shell text it sits in, and its arguments."""

    line: int          # README.md line the command starts on
    shell: str         # the shell text to run (continuations joined, `.venv/bin/` dropped)
    program: str       # "lapeval" or "lm_eval"
    argv: list[str]    # its arguments; a $(...) inside them is SUBST

    @property
    def where(self) -> str:
        return f"README.md:{self.line}: {self.shell}"

    @property
    def words(self) -> str:
        return " ".join([self.program, *self.argv])


def fenced_blocks(text: str):
    """(language, line of the first content line, content lines) of every ``` block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            lang, start, body = lines[i].strip()[3:].strip(), i + 2, []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i])
                i += 1
            yield lang, start, body
        i += 1


def yaml_run_lines(start: int, body: list[str]):
    """(line number, shell line) of the ``run:`` steps of a GitHub Actions block."""
    for k, line in enumerate(body):
        m = re.match(r"^(\s*)(?:- )?run:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2)
        if value.startswith("|"):
            indent = len(m.group(1))
            for j in range(k + 1, len(body)):
                if body[j].strip() and len(body[j]) - len(body[j].lstrip()) <= indent:
                    break
                yield start + j, body[j].strip()
        else:
            yield start + k, value


def shell_lines(lang: str, start: int, body: list[str]):
    """(line number, command text) per command of a block: continuations joined, comments, blank lines
    and (in console blocks) output lines dropped, ``$ `` prompts stripped."""
    if lang == "yaml":
        numbered = list(yaml_run_lines(start, body))
    elif lang in SHELL_FENCES:
        numbered = [(start + k, line) for k, line in enumerate(body)]
    else:
        return
    k = 0
    while k < len(numbered):
        n, line = numbered[k]
        k += 1
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and k < len(numbered):
            line = line.rstrip()[:-1] + " " + numbered[k][1].strip()
            k += 1
        yield n, line.strip()


def commands_in(line: int, shell: str) -> list[Command]:
    """The lapeval / lm_eval calls in one shell command: itself (after env assignments or a launcher's
    ``-m``), those inside its ``$(...)``, and those inside a quoted argument (``--wrap '...'``)."""
    shell = re.sub(r"(?<!\S)\.venv/bin/", "", shell)
    found = []
    for inner in re.findall(r"\$\(([^()]*)\)", shell):
        found += commands_in(line, inner)
    tokens = shlex.split(re.sub(r"\$\([^()]*\)", SUBST, shell), comments=True)
    for i, tok in enumerate(tokens):
        if tok in PROGRAMS:
            return found + [Command(line, shell, PROGRAMS[tok], tokens[i + 1:])]
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1] in PROGRAMS:
            return found + [Command(line, shell, PROGRAMS[tokens[i + 1]], tokens[i + 2:])]
        if " " in tok and tok.split()[0] in PROGRAMS:
            found += commands_in(line, tok)
    return found


def readme_commands() -> list[Command]:
    """Every lapeval / lm_eval command of the README's fenced blocks, in order."""
    out = []
    for lang, start, body in fenced_blocks(README.read_text(encoding="utf-8")):
        for n, shell in shell_lines(lang, start, body):
            out += commands_in(n, shell)
    return out


# ---- the parsers --------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


LAPEVAL = build_parser()


def _lm_eval_parser() -> argparse.ArgumentParser:
    """The parser behind lm-eval 0.4.13's ``lm_eval`` (and so ``lapeval eval``): run / ls / validate."""
    from lm_eval._cli.harness import HarnessCLI

    return HarnessCLI()._parser


LM_EVAL = _lm_eval_parser()
LM_EVAL_SUBCOMMANDS = tuple(_subparsers(LM_EVAL))


@dataclass
class Resolved:
    path: tuple           # the (sub)command, e.g. ("lss", "score"); lm_eval's are ("run",) or ("eval", "run")
    parser: argparse.ArgumentParser
    rest: list[str]       # the arguments after the (sub)command
    error: str = ""


def _lm_eval_resolve(path: list[str], args: list[str]) -> Resolved:
    """lm-eval's legacy form: without a subcommand, ``run`` is meant."""
    sub = args[0] if args and args[0] in LM_EVAL_SUBCOMMANDS else None
    rest = args[1:] if sub else args
    return Resolved((*path, sub or "run"), _subparsers(LM_EVAL)[sub or "run"], rest)


def resolve(cmd: Command) -> Resolved:
    """Walk the subparsers along the command's leading words."""
    if cmd.program == "lm_eval":
        return _lm_eval_resolve([], cmd.argv)
    parser, path, args = LAPEVAL, [], list(cmd.argv)
    while (subs := _subparsers(parser)) is not None:
        if not args or args[0] not in subs:
            if any(a in ("-h", "--help", "--version") for a in args):
                break
            name = " ".join(["lapeval", *path])
            return Resolved(tuple(path), parser, args,
                            f"`{name}` needs one of {sorted(subs)}, got {args[:1] or 'nothing'}")
        path.append(args.pop(0))
        parser = subs[path[-1]]
        if path == ["eval"]:
            return _lm_eval_resolve(path, args)
    return Resolved(tuple(path), parser, args)


def options(res: Resolved):
    """(index, option name, its argparse action) of every option in the arguments."""
    for i, tok in enumerate(res.rest):
        if tok.startswith("-") and tok != "-" and not re.match(r"-\d", tok):
            name = tok.split("=", 1)[0]
            yield i, name, res.parser._option_string_actions.get(name)


def output_values(res: Resolved) -> list[str]:
    """The values given to output options (``--out X``, ``--output_path=X``, ...)."""
    values = []
    for i, name, action in options(res):
        if name in OUTPUT_FLAGS and action is not None and action.nargs != 0:
            tok = res.rest[i]
            values.append(tok.split("=", 1)[1] if "=" in tok else (res.rest[i + 1] if i + 1 < len(res.rest) else ""))
    return values


def inputs(res: Resolved) -> list[str]:
    """Every argument that is not an output option or its value."""
    skip = set()
    for i, name, action in options(res):
        if name in OUTPUT_FLAGS and action is not None and action.nargs != 0:
            skip.update({i} if "=" in res.rest[i] else {i, i + 1})
    return [tok for i, tok in enumerate(res.rest) if i not in skip]


def runnable(cmd: Command, res: Resolved) -> bool:
    """Cheap, complete (no ``...``) and reading only committed files (nothing an earlier run wrote)."""
    return (res.path in CHEAP and not res.error and "..." not in cmd.argv
            and not any(RUN_OUTPUT.search(tok) for tok in inputs(res)))


COMMANDS = readme_commands()
RESOLVED = [resolve(c) for c in COMMANDS]
PAIRS = list(zip(COMMANDS, RESOLVED))
TO_RUN = [(c, r) for c, r in PAIRS if runnable(c, r)]
TO_HELP = sorted({(c.program, r.path) for c, r in PAIRS if not runnable(c, r) and not r.error})


def _id(pair) -> str:
    cmd, res = pair
    return f"L{cmd.line}-{cmd.program}-{'-'.join(res.path) or 'root'}"


def _run(argv_or_shell, timeout: int = 120) -> subprocess.CompletedProcess:
    argv = ["bash", "-c", argv_or_shell] if isinstance(argv_or_shell, str) else argv_or_shell
    return subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _committed_snapshot() -> dict:
    """(size, mtime) of every file in the committed folders a command could write beside."""
    return {p: (s.st_size, s.st_mtime_ns) for d in COMMITTED_DIRS for p in (ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts for s in [p.stat()]}


# ---- the tests ----------------------------------------------------------------------------------------

def test_setup_section_is_make_demo_and_make_test():
    """The two set-up commands of "Two commands" are exactly `make demo` and `make test`, and exist."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    lang, start, body = next(fenced_blocks(section))
    cmds = [shlex.split(line, comments=True) for _, line in shell_lines(lang, start, body)]
    assert cmds == [["make", "demo"], ["make", "test"]], f"README's set-up block is {cmds}"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no `{target}` target"


def test_enough_commands_found():
    """The parser found the README's commands, and the known-cheap ones are among those run."""
    assert len(COMMANDS) >= MIN_COMMANDS, f"only {len(COMMANDS)} lapeval/lm_eval commands found in README.md"
    ran = [c.words for c, _ in TO_RUN]
    for expected in MUST_RUN:
        assert any(w == expected or w.startswith(expected + " ") for w in ran), \
            f"README.md has no runnable `{expected}` any more (run here: {ran})"


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_subcommand_and_flags_exist(pair):
    """The (sub)command exists and each option is spelled as its parser defines it."""
    cmd, res = pair
    assert not res.error, f"{cmd.where}\n  {res.error}"
    unknown = [name for _, name, action in options(res) if action is None]
    name = " ".join([cmd.program, *res.path])
    assert not unknown, f"{cmd.where}\n  `{name}` has no option {unknown}"
    complete = "..." not in cmd.argv and not any("$" in t for t in cmd.argv)
    if complete and not {"-h", "--help", "--version"} & set(res.rest):  # then argparse accepts it whole
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                res.parser.parse_args(res.rest)
        except SystemExit:
            pytest.fail(f"{cmd.where}\n  `{name}` rejects it: {err.getvalue().strip()}")


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
def test_reads_committed_files_and_writes_under_out(pair):
    """Committed inputs exist; outputs go under out/, never over a committed file."""
    cmd, res = pair
    for tok in inputs(res):
        for path in COMMITTED.findall(tok):
            assert (ROOT / path).exists(), f"{cmd.where}\n  {path} does not exist in the checkout"
    for value in output_values(res):
        assert value.startswith("out/"), f"{cmd.where}\n  writes to {value!r}: outside out/"
    flags = {name for _, name, _ in options(res)}
    if res.path in WRITES_BESIDE_INPUT:
        assert "--out" in flags, f"{cmd.where}\n  without --out it writes beside its input (a committed file)"
    if res.path == ("grid",) and "--output" not in flags:
        for config in (t for t in res.rest if t.endswith((".yaml", ".yml")) and (ROOT / t).is_file()):
            output = (yaml.safe_load((ROOT / config).read_text(encoding="utf-8")) or {}).get("output", "out/grid")
            assert str(output).startswith("out/"), \
                f"{cmd.where}\n  {config} writes to {output}: give --output out/..."


@pytest.mark.parametrize("pair", TO_RUN, ids=[_id(p) for p in TO_RUN])
def test_cheap_command_runs_as_written(pair):
    """A cheap command, run as written from the repository root (offline), exits 0 and leaves the
    committed folders untouched."""
    cmd, _ = pair
    before = _committed_snapshot()
    proc = _run(cmd.shell)
    assert proc.returncode == 0, f"{cmd.where}\n  exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    assert _committed_snapshot() == before, f"{cmd.where}\n  changed files under {COMMITTED_DIRS}"


@pytest.mark.parametrize("program,path", TO_HELP, ids=[f"{p}-{'-'.join(s)}" for p, s in TO_HELP])
def test_expensive_command_help(program, path):
    """Each command too expensive to run here answers ``--help``."""
    proc = _run([str(BIN / program), *path, "--help"])
    name = " ".join([program, *path])
    assert proc.returncode == 0, f"`{name} --help` exits {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    assert "usage:" in proc.stdout, f"`{name} --help` printed no usage"


def test_readme_links_exist():
    """Relative links and images of the README point at files of the checkout."""
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:|#", target):
            continue
        assert (ROOT / target.split("#", 1)[0]).exists(), f"README.md links to missing {target}"
