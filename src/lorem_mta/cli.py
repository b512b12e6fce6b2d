"""Command line interface of lorem_mta.

* ``lorem-mta export MODEL -o NEW.pt``: change what an exported model (``.pt``) or a
  metatrain checkpoint (``.ckpt``) computes without retraining: long-range method and
  accuracy, memory limit, dtype (``--dtype float64``);
* ``lorem-mta info MODEL``: what a model file is (hyperparameters, long-range settings,
  dtype, atomic types, outputs, versions);
* ``lorem-mta convert-jax INPUT -o model.pt``: convert lorem-jax parameters. INPUT is a
  flattened lorem-jax parameter file (``.npz``) or a lorem-jax training run: a
  checkpoint folder (``run/checkpoints/R2_E+F``), its ``model/`` folder or
  ``model.msgpack``, a ``run/`` folder or the experiment folder that holds ``run/``.
"""

import argparse
import os
import sys
from typing import List, Optional

import torch

from . import __version__

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


def _accuracy(text: str):
    if text.lower() in ("reference", "none"):
        return "reference"
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--long-range-accuracy expects a number in (0, 1) or 'reference', got '{text}'"
        ) from e
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"--long-range-accuracy must be between 0 and 1, got {value}"
        )
    return value


def _reference(value):
    """``None`` (the reference settings) for ``'reference'``, else the value."""
    return None if value == "reference" else value


def _long_range_options(parser: argparse.ArgumentParser, keep: bool) -> None:
    """``--long-range-method``, ``--long-range-accuracy`` and ``--memory-limit``."""
    from .modules.lr_cost import METHODS

    now = "keep the model's" if keep else "auto"
    parser.add_argument(
        "--long-range-method",
        choices=METHODS,
        default=None if keep else "auto",
        help=(
            "how the Coulomb sums of periodic structures are evaluated: auto (fastest "
            "estimated method that fits the memory, per structure), ewald (exact "
            "lorem-jax reference), pme (particle-mesh Ewald) or direct (image pairs, "
            f"for a few atoms in a big box); default: {now}"
        ),
    )
    parser.add_argument(
        "--long-range-accuracy",
        type=_accuracy,
        default=None,
        help=(
            "target relative accuracy of the long-range sum, or 'reference' (lorem-jax's "
            "k-vectors with ewald, 1e-5 otherwise); default: "
            + ("keep the model's" if keep else "reference")
        ),
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        metavar="GB",
        help="largest estimated memory of the long-range sum of one structure "
        + ("(default: keep the model's)" if keep else "(default: 16)"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorem-mta", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"lorem-mta {__version__} (torch {torch.__version__})",
    )
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
    _long_range_options(convert, keep=False)

    export = commands.add_parser(
        "export",
        help="change what a model (.pt) or checkpoint (.ckpt) computes, without retraining",
        description=(
            "Write MODEL (an exported metatomic model, .pt, or a checkpoint of `mtt "
            "train`, .ckpt) to OUTPUT with other long-range settings or another dtype. "
            "The weights are unchanged; every long-range method computes the same "
            "potentials within its accuracy. From a checkpoint, OUTPUT may also be a "
            ".ckpt with the new long-range settings (to fine-tune with them)."
        ),
    )
    export.add_argument("model", help="exported model (.pt) or mtt checkpoint (.ckpt)")
    export.add_argument("-o", "--output", required=True, help="new model (.pt or .ckpt)")
    export.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: keep the model's"
    )
    _long_range_options(export, keep=True)
    export.add_argument(
        "--extensions",
        default=None,
        help="folder for compiled extensions (default: 'extensions' next to the output)",
    )

    info = commands.add_parser(
        "info",
        help="print what a model file is",
        description=(
            "Print the metadata, hyperparameters, long-range settings, dtype, atomic "
            "types, outputs and versions of an exported model (.pt) or checkpoint (.ckpt)."
        ),
    )
    info.add_argument("model", help="exported model (.pt) or mtt checkpoint (.ckpt)")
    info.add_argument("--extensions", default=None, help="folder of compiled extensions")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line interface.

    :param argv: arguments (default: ``sys.argv[1:]``)
    :return: exit code
    """
    args = _parser().parse_args(argv)
    if args.command in ("export", "info"):
        return _model_file_command(args)
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
                long_range_method=args.long_range_method,
                long_range_accuracy=_reference(args.long_range_accuracy),
                memory_limit_gb=args.memory_limit,
            )
        except (ValueError, KeyError, ImportError, OSError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {message}", file=sys.stderr)
            return 1
        if os.path.isdir(extensions) and len(os.listdir(extensions)) > 0:
            print(f"wrote {args.output} (extensions in {extensions})")
        else:
            print(f"wrote {args.output} (no compiled extensions needed)")
    return 0


def _model_file_command(args: argparse.Namespace) -> int:
    """``lorem-mta export`` and ``lorem-mta info``."""
    from .model_files import KEEP, default_extensions, describe, export_model

    if not os.path.exists(args.model):
        print(f"error: no such file: {args.model}", file=sys.stderr)
        return 2
    try:
        if args.command == "info":
            print(describe(args.model, args.extensions))
            return 0
        extensions = args.extensions
        if extensions is None and not args.output.endswith(".ckpt"):
            extensions = default_extensions(args.output)
        summary = export_model(
            args.model,
            args.output,
            method=args.long_range_method,
            accuracy=KEEP
            if args.long_range_accuracy is None
            else _reference(args.long_range_accuracy),
            dtype=None if args.dtype is None else DTYPES[args.dtype],
            memory_limit_gb=args.memory_limit,
            extensions=extensions,
        )
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
