"""``cadstore info DATASET``: the table of contents of a merged dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add the ``info`` subcommand."""
    parser = sub.add_parser(
        "info",
        help="print a dataset's table of contents",
        description="Groups, arrays (shape, dims, size) and the item table of a dataset.",
    )
    parser.add_argument("dataset", help="a .dataset or its .flow manifest")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table of contents."""
    from cadstore.cli._dataset_args import dataset_sources
    from cadstore.dataset.explorer import DatasetExplorer

    sources = dataset_sources(args.dataset, args.storage_options)
    with DatasetExplorer(**sources, trust_manifest=args.trust_manifest) as explorer:
        if args.json:
            groups: dict[str, dict[str, dict[str, object]]] = {}
            for group in sorted(explorer.available_groups()):
                groups[group] = {}
                for array in sorted(explorer.available_arrays(group)):
                    meta = explorer.reader.array_meta(group, array)
                    groups[group][array] = {
                        "shape": list(meta.shape),
                        "dtype": str(meta.dtype),
                        "dims": list(meta.dims or ()),
                    }
            info = explorer.get_file_info_all()
            print(
                json.dumps(
                    {
                        "items": explorer.n_items,
                        "groups": groups,
                        "info_columns": [str(c) for c in info.columns],
                    },
                    indent=1,
                )
            )
        else:
            print(explorer.table_of_contents())
    return 0
