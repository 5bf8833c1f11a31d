"""``cadstore split DATASET --key KEY``: a stratified train/validation/test split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cadstore.cli._common import positive_int
from cadstore.dataset.loader import DEFAULT_SPLIT_BINS


def register(sub: Any) -> None:
    """Add the ``split`` subcommand."""
    parser = sub.add_parser(
        "split",
        help="split a dataset into train/validation/test, stratified on a key",
        description="Multi-label stratified split, recorded in the infoset's subset column.",
    )
    parser.add_argument("dataset", help="a .dataset or its .flow manifest")
    parser.add_argument(
        "--key",
        required=True,
        help="label to stratify on (an array such as face_types, or an "
        "infoset column such as file_label)",
    )
    parser.add_argument("--group", help="group holding the key (default: found automatically)")
    parser.add_argument("--train", type=float, default=0.6, help="fraction of items to train on")
    parser.add_argument(
        "--validation", type=float, default=0.2, help="fraction of items to validate on"
    )
    parser.add_argument("--test", type=float, default=0.2, help="fraction of items to test on")
    parser.add_argument(
        "--bins",
        type=positive_int,
        default=None,
        metavar="N",
        help="quantile bins of a numeric key such as size_cadfile or processing_time "
        f"(default: {DEFAULT_SPLIT_BINS}, fewer when items are few)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random state, a non-negative integer")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Split and print the subset sizes."""
    from cadstore.cli._common import CommandError
    from cadstore.cli._dataset_args import dataset_sources
    from cadstore.dataset.loader import DatasetLoader

    if args.seed < 0:
        # numpy's own refusal ("expected non-negative integer") names no option.
        raise CommandError(f"--seed must be a non-negative integer, got {args.seed}")
    sources = dataset_sources(args.dataset, args.storage_options)
    # The split is recorded in the .infoset beside the dataset (created from the tables the
    # dataset carries when there is none yet).
    loader = DatasetLoader(**sources, trust_manifest=args.trust_manifest)
    try:
        n_train, n_val, n_test = loader.split(
            key=args.key,
            group=args.group,
            train=args.train,
            validation=args.validation,
            test=args.test,
            random_state=args.seed,
            force_reset=True,
            bins=args.bins,
        )
    finally:
        loader.close_resources()
    counts = {"train": n_train, "validation": n_val, "test": n_test}
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"split on {args.key!r}: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + " (recorded in the infoset's subset column)"
        )
    return 0
