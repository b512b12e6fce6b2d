"""Command line interface: ``lorem-mta convert-jax INPUT -o model.pt``."""

import argparse
import os
import sys
from typing import List, Optional

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _types(text: str) -> List[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--types expects comma-separated atomic numbers, got '{text}'"
        ) from e
    if not values:
        raise argparse.ArgumentTypeError("--types must list at least one atomic number")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorem-mta", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert-jax",
        help="convert lorem-jax parameters (.npz) into a metatomic model",
        description=(
            "Convert a flattened lorem-jax parameter tree (keys 'param/<flax path>' "
            "and 'hypers_json') into an exported metatomic model."
        ),
    )
    convert.add_argument("input", help="lorem-jax parameter file (.npz)")
    convert.add_argument("-o", "--output", default="model.pt", help="exported model")
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    convert.add_argument(
        "--types",
        type=_types,
        default=None,
        help="comma-separated atomic numbers the model accepts (default: 1-99)",
    )
    convert.add_argument(
        "--extensions",
        default=None,
        help="folder for compiled extensions (default: 'extensions' next to the model)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line interface.

    :param argv: arguments (default: ``sys.argv[1:]``)
    :return: exit code
    """
    args = _parser().parse_args(argv)
    if args.command == "convert-jax":
        from .convert import convert_jax

        if not os.path.isfile(args.input):
            print(f"error: no such file: {args.input}", file=sys.stderr)
            return 2
        extensions = args.extensions
        if extensions is None:
            extensions = os.path.join(
                os.path.dirname(os.path.abspath(args.output)), "extensions"
            )
        try:
            convert_jax(args.input, args.output, DTYPES[args.dtype], args.types, extensions)
        except (ValueError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {args.output} (extensions in {extensions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
