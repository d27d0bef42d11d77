"""``lapeval check RESULTS --against REFERENCE``: a CI regression gate over lm-eval results (see lapeval/check.py).

Exit status: 0 when every reference metric is within tolerance, 1 when one moved or is missing, 2 on bad input."""

from __future__ import annotations

import argparse

_EPILOG = """\
rule: a reference metric passes iff |result - ref| <= max(abs_tol, rel_tol*|ref|, k*sqrt(se_res^2 + se_ref^2));
the stderr term applies only when both sides report a standard error ("N/A" = none). NaN equals only NaN.
A reference metric missing from RESULTS fails; metrics only in RESULTS are counted, never fail.
RESULTS / REFERENCE: an lm-eval results_*.json, an lm-eval --output_path folder (its newest results_*.json,
or its summary.json when that is a lapeval grid summary), or a lapeval grid summary.json.
exit status: 0 all within tolerance, 1 a metric moved or is missing, 2 bad input.

example: lapeval check out/ci --against out/ci-reference --tolerance 0.01 --tolerance word_perplexity=0.5
"""


def register(sub) -> None:
    from ..gate import (  # pure json/math: cheap
        DEFAULT_ABS_TOL,
        DEFAULT_REL_TOL,
        DEFAULT_STDERR_K,
    )

    p = sub.add_parser("check", help="CI regression gate: fail when a metric moved beyond tolerance from a reference",
                       description="Compare evaluation results with a reference; exit 1 when a metric moved beyond "
                                   "tolerance or is missing.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="RESULTS", help="results of the run under test (file or lm-eval output folder)")
    p.add_argument("--against", metavar="REFERENCE", required=True, help="the reference results (file or folder)")
    p.add_argument("--tolerance", metavar="[METRIC=]X", action="append", default=[],
                   help=f"absolute tolerance (default {DEFAULT_ABS_TOL:g}); METRIC=X overrides it for a metric "
                        "(fnmatch on 'acc' or 'acc,none'; the last match wins); repeatable")
    p.add_argument("--rel-tolerance", metavar="R", type=float, default=DEFAULT_REL_TOL,
                   help=f"relative tolerance, a share of |ref| (default {DEFAULT_REL_TOL:g})")
    p.add_argument("--stderr-k", metavar="K", type=float, default=DEFAULT_STDERR_K,
                   help=f"allow K combined standard errors when both sides have one (default {DEFAULT_STDERR_K:g}; 0 = off)")
    p.add_argument("--cells", metavar="PATTERN", action="append", default=[],
                   help="compare only these grid cells (fnmatch; repeatable)")
    p.add_argument("--tasks", metavar="PATTERN", action="append", default=[],
                   help="compare only these tasks (fnmatch; repeatable)")
    p.add_argument("--metrics", metavar="PATTERN", action="append", default=[],
                   help="compare only these metrics (fnmatch on 'acc' or 'acc,none'; repeatable)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the full comparison as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every compared metric, not only failures")
    p.set_defaults(handler=_check)


def _check(args) -> int:
    from .._io import write_json
    from ..gate import CheckError, check

    cmp = check(args.results, args.against, args.tolerance, rel_tolerance=args.rel_tolerance, stderr_k=args.stderr_k,
                cells=args.cells, tasks=args.tasks, metrics=args.metrics)
    print(f"comparing {cmp.results.path} with reference {cmp.reference.path}")
    for line in cmp.lines(verbose=args.verbose):
        print(line)
    if args.json:
        try:
            write_json(args.json, cmp.as_dict())
        except OSError as e:
            raise CheckError(f"--json {args.json}: cannot write ({e.strerror or e}); choose a writable path") from None
    return 0 if cmp.passed else 1
