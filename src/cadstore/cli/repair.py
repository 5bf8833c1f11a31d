"""``cadstore repair DATASET``: finish or undo what an interrupted writer left.

Given a folder a :class:`~cadstore.storage.JsonStorageHandler` wrote (see
:func:`~cadstore.storage.json_handler.is_json_store`), it runs the store's own
:meth:`~cadstore.storage.JsonStorageHandler.repair` instead; any other path is a dataset,
or the error of one.
"""

from __future__ import annotations

import argparse
from typing import Any

from cadstore.cli._common import wait_seconds


def register(sub: Any) -> None:
    """Add the ``repair`` subcommand."""
    parser = sub.add_parser(
        "repair",
        help="finish or undo an interrupted merge, append or split of a dataset",
        description="Take the dataset's lock and finish or undo what a merge, append or "
        "split that was killed left behind: staged files are removed (rolled back), or the "
        ".infoset, .attribset and .flow are published again from the dataset (rolled "
        "forward). Any later merge, append or split does the same first; this does only "
        "that. A path that is not a dataset (missing, unreadable, not a cadstore dataset) "
        "is an error, unless a killed writer's lock is beside it. A folder of a JSON store "
        "(JsonStorageHandler) is repaired as one: the files a killed save left below a "
        "newer one are removed and the sizes metadata.json records corrected; run it "
        "while no one writes the store.",
    )
    parser.add_argument(
        "dataset", help="the .dataset (or its .flow manifest), or a JSON store's folder"
    )
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a writer still at work (0: fail at once)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Repair the dataset, or the JSON store, and say what was done."""
    from cadstore.artefacts import check_json_files
    from cadstore.cli.report import dataset_of
    from cadstore.io.location import resolve
    from cadstore.lifecycle import repair
    from cadstore.storage.json_handler import JsonStorageHandler, is_json_store

    where = resolve(args.dataset, args.storage_options, shared=True)
    if is_json_store(where):
        what = args.dataset
        if not where.remote:
            check_json_files(where, set(where.listdir()))  # a pipe would block the open
        store = JsonStorageHandler(where)
        try:
            done = store.repair()
        finally:
            store.close()
    else:
        what = dataset_of(args.dataset, args.storage_options, trust_manifest=args.trust_manifest)
        done = repair(what, timeout=args.wait, storage_options=args.storage_options)
    for sentence in done:
        print(sentence)
    if not done:
        print(f"{what}: nothing to repair")
    return 0
