"""Command line interface: ``lorem-mta convert-jax INPUT -o model.pt``.

INPUT is a flattened lorem-jax parameter file (``.npz``) or a lorem-jax training run: a
checkpoint folder (``run/checkpoints/R2_E+F``), its ``model/`` folder or
``model.msgpack``, a ``run/`` folder or the experiment folder that holds ``run/``.
"""

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
        help="convert lorem-jax parameters (.npz or training run) into a metatomic model",
        description=(
            "Convert lorem-jax parameters into an exported metatomic model. INPUT is a "
            "flattened parameter tree (.npz with keys 'param/<flax path>' and "
            "'hypers_json') or a lorem-jax training run (lorem-train): a checkpoint "
            "folder such as run/checkpoints/R2_E+F (what lorem's "
            "Calculator.from_checkpoint takes), its model/ folder or model.msgpack, a "
            "run/ folder or the experiment folder holding run/. A run's per-species "
            "energy baseline (model/baseline.yaml) is included in the model's energy."
        ),
    )
    convert.add_argument(
        "input", help="lorem-jax parameter file (.npz) or training run / checkpoint folder"
    )
    convert.add_argument("-o", "--output", default="model.pt", help="exported model")
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    convert.add_argument(
        "--types",
        type=_types,
        default=None,
        help=(
            "comma-separated atomic numbers the model accepts (default: the species a "
            "training run was trained on, 1-99 for a .npz)"
        ),
    )
    convert.add_argument(
        "--checkpoint",
        default=None,
        help=(
            "checkpoint of a run/ or experiment folder, a folder name under "
            "run/checkpoints (default: the R2_* one, best validation R2)"
        ),
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

        if not os.path.exists(args.input):
            print(f"error: no such file or folder: {args.input}", file=sys.stderr)
            return 2
        extensions = args.extensions
        if extensions is None:
            extensions = os.path.join(
                os.path.dirname(os.path.abspath(args.output)), "extensions"
            )
        try:
            convert_jax(
                args.input,
                args.output,
                DTYPES[args.dtype],
                args.types,
                extensions,
                checkpoint=args.checkpoint,
            )
        except (ValueError, KeyError, ImportError, OSError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {message}", file=sys.stderr)
            return 1
        print(f"wrote {args.output} (extensions in {extensions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
