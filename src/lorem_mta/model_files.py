"""Change and describe existing model files: ``lorem-mta export`` and ``lorem-mta info``.

What a trained LOREM model computes besides its weights — how the long-range sum is
evaluated (method, accuracy, memory limit) and the dtype — can be changed without
retraining:

* an exported model (``.pt``) is loaded with metatomic, the settings of its long-range
  planners (:py:class:`~lorem_mta.modules.lr_cost.LongRangePlanner`, plain TorchScript
  attributes) are set, and it is cast to the new dtype and saved again;
* a metatrain checkpoint (``.ckpt``, written by ``mtt train``) is loaded with its best
  weights, changed the same way and exported (``-o model.pt``), or written back as a
  checkpoint with the new long-range settings in its hyperparameters (``-o
  model.ckpt``), e.g. to fine-tune with another method.
"""

import json
import os
from typing import Any, Dict, List, Optional

import torch

from . import __version__
from .files import write_atomically
from .modules.lr_cost import METHODS, LongRangePlanner

#: hyperparameters that only say how the long-range sum is evaluated
LONG_RANGE_SETTINGS = ["long_range_method", "long_range_accuracy"]

#: sentinel: keep the accuracy of the model
KEEP = "keep"


def planners(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The long-range planners of ``model`` (eager or TorchScript).

    :param model: any module holding LOREM long-range blocks
    :return: list of :py:class:`LongRangePlanner` (or their scripted versions)
    """
    found = []
    for _, module in model.named_modules():
        scripted = getattr(module, "original_name", "") == "LongRangePlanner"
        if scripted or isinstance(module, LongRangePlanner):
            found.append(module)
    return found


def set_long_range(
    model: torch.nn.Module,
    method: Optional[str] = None,
    accuracy: Any = KEEP,
    memory_limit_gb: Optional[float] = None,
) -> int:
    """Set how ``model`` evaluates its long-range sums; keep what is not given.

    :param model: eager or TorchScript module
    :param method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``
    :param accuracy: target accuracy, ``None`` for the reference settings
    :param memory_limit_gb: memory limit of the sum of one structure, GiB
    :return: the number of long-range blocks changed
    """
    found = planners(model)
    for planner in found:
        new_method = planner.method if method is None else method
        new_accuracy = accuracy
        if isinstance(accuracy, str) and accuracy == KEEP:
            new_accuracy = planner.accuracy if planner.accuracy > 0 else None
        limit = planner.memory_limit / 1024.0**3
        if memory_limit_gb is not None:
            limit = memory_limit_gb
        # validates the values with the messages of the planner
        checked = LongRangePlanner(planner.cutoff, new_method, new_accuracy, limit)
        planner.method = checked.method
        planner.accuracy = checked.accuracy
        planner.memory_limit = checked.memory_limit
    return len(found)


def long_range_settings(model: torch.nn.Module) -> Optional[Dict[str, str]]:
    """The long-range settings of ``model`` as text, ``None`` without long range."""
    found = planners(model)
    if not found:
        return None
    planner = found[0]
    if planner.accuracy > 0:
        accuracy = str(planner.accuracy)
    elif planner.method == "ewald":
        accuracy = "reference (lorem-jax k-vectors, wavelength cutoff / 8)"
    else:
        accuracy = "default (1e-05)"
    return {
        "method": planner.method,
        "accuracy": accuracy,
        "memory limit": f"{planner.memory_limit / 1024.0**3:g} GB per structure",
    }


def _set_dtype(atomistic: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a loaded (TorchScript) metatomic model to ``dtype``, capabilities included."""
    atomistic.to(dtype)
    atomistic._model_dtype = dtype
    capabilities = atomistic.capabilities()
    capabilities.dtype = "float64" if dtype == torch.float64 else "float32"
    atomistic._capabilities = capabilities


def _load_checkpoint(path: str):
    """The :py:class:`~lorem_mta.architecture.LoremMta` of a metatrain checkpoint."""
    from .architecture.model import ARCHITECTURE_NAME, LoremMta

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    if not isinstance(checkpoint, dict) or "model_data" not in checkpoint:
        raise ValueError(f"'{path}' is not a metatrain checkpoint")
    name = checkpoint.get("architecture_name")
    if name != ARCHITECTURE_NAME:
        raise ValueError(
            f"'{path}' is a checkpoint of '{name}', not of LOREM ({ARCHITECTURE_NAME})"
        )
    checkpoint = LoremMta.upgrade_checkpoint(checkpoint)
    return checkpoint, LoremMta.load_checkpoint(checkpoint, context="export")


def export_model(
    path: str,
    output: str,
    method: Optional[str] = None,
    accuracy: Any = KEEP,
    dtype: Optional[torch.dtype] = None,
    memory_limit_gb: Optional[float] = None,
    extensions: Optional[str] = None,
) -> str:
    """Write ``path`` (``.pt`` or ``.ckpt``) to ``output`` with new settings.

    :param path: exported model (``.pt``) or metatrain checkpoint (``.ckpt``)
    :param output: ``.pt`` (exported model) or, for a checkpoint, ``.ckpt``
    :param method: long-range method (``None``: keep)
    :param accuracy: long-range accuracy (:py:data:`KEEP`: keep, ``None``: reference)
    :param dtype: dtype of the exported model (``None``: keep)
    :param memory_limit_gb: memory limit of the long-range sum (``None``: keep)
    :param extensions: folder for the compiled extensions of an exported model
    :return: a one-line summary of what was written
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown long-range method '{method}': use one of {METHODS}")
    if path.endswith(".ckpt"):
        return _export_checkpoint(
            path, output, method, accuracy, dtype, memory_limit_gb, extensions
        )
    if output.endswith(".ckpt"):
        raise ValueError("only a checkpoint (.ckpt) can be written as a checkpoint")
    from metatomic.torch import load_atomistic_model

    atomistic = load_atomistic_model(path, extensions_directory=extensions)
    changed = set_long_range(atomistic, method, accuracy, memory_limit_gb)
    wants_lr = method is not None or memory_limit_gb is not None or accuracy != KEEP
    if changed == 0 and wants_lr:
        raise ValueError(
            f"'{path}' has no adjustable long-range block (a model without long range, "
            "or exported by an older lorem_mta): export it again from its checkpoint "
            "(`lorem-mta export model.ckpt -o NEW.pt ...`) or convert it again "
            "(`lorem-mta convert-jax ... --long-range-method ...`)"
        )
    _update_stored_hypers(atomistic)
    if dtype is not None:
        _set_dtype(atomistic, dtype)
    _save_model(atomistic, output, extensions)
    return _summary(output, atomistic)


def _export_checkpoint(path, output, method, accuracy, dtype, memory_limit_gb, extensions):
    checkpoint, model = _load_checkpoint(path)
    hypers = model.hypers
    new_method = hypers["long_range_method"] if method is None else method
    new_accuracy = hypers["long_range_accuracy"] if accuracy == KEEP else accuracy
    if output.endswith(".ckpt"):
        if dtype is not None or memory_limit_gb is not None:
            raise ValueError(
                "a checkpoint keeps its training dtype and no memory limit: set "
                "--dtype and --memory-limit when exporting to .pt"
            )
        model_hypers = checkpoint["model_data"]["model_hypers"]
        model_hypers["long_range_method"] = new_method
        model_hypers["long_range_accuracy"] = new_accuracy
        _save_checkpoint(checkpoint, output)
        return (
            f"wrote {output}: long_range_method={new_method}, "
            f"long_range_accuracy={new_accuracy}"
        )
    model.set_long_range(new_method, new_accuracy)
    if memory_limit_gb is not None:
        set_long_range(model, memory_limit_gb=memory_limit_gb)
    if dtype is not None:
        model.to(dtype)
    atomistic = model.export()
    _save_model(atomistic, output, extensions)
    return _summary(output, atomistic)


def _save_model(atomistic: torch.nn.Module, output: str, extensions: Optional[str]) -> None:
    """Write an exported model atomically; a full disk raises (see lorem_mta.files)."""
    from .model import _atomic_save

    _atomic_save(atomistic, output, extensions)


def _save_checkpoint(checkpoint: Dict[str, Any], output: str) -> None:
    """``torch.save`` through a Python file object: write errors raise ``OSError``."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)

    write_atomically(output, write)


def _summary(output: str, atomistic: torch.nn.Module) -> str:
    settings = long_range_settings(atomistic)
    text = f"wrote {output} ({atomistic.capabilities().dtype}"
    if settings is not None:
        text += f", long range: {settings['method']}, accuracy {settings['accuracy']}"
    return text + ")"


def hypers_json(hypers: Dict[str, Any]) -> str:
    """The hyperparameters to store in an exported model (see ``lorem-mta info``)."""
    return json.dumps({"lorem_mta_version": __version__, **hypers}, default=str)


def describe(path: str, extensions: Optional[str] = None) -> str:
    """What a model file is: metadata, hyperparameters, long range, dtype, outputs.

    :param path: exported model (``.pt``) or metatrain checkpoint (``.ckpt``)
    :param extensions: folder of the compiled extensions of an exported model
    :return: the description, one ``key: value`` per line
    """
    lines: List[str] = []
    if path.endswith(".ckpt"):
        checkpoint, model = _load_checkpoint(path)
        lines.append(
            f"file: {path} (metatrain checkpoint of {checkpoint['architecture_name']})"
        )
        lines.append(f"checkpoint version: {checkpoint.get('model_ckpt_version')}")
        lines.append(
            f"epoch: {checkpoint.get('epoch')}, best epoch: {checkpoint.get('best_epoch')}"
        )
        dtype = next(model.lorem.parameters()).dtype
        lines.append(f"dtype (training): {str(dtype).replace('torch.', '')}")
        lines.append(f"atomic types: {list(model.atomic_types)}")
        lines.append(f"outputs: {', '.join(model.outputs)}")
        lines.append("hyperparameters:")
        for name, value in model.hypers.items():
            lines.append(f"  {name}: {value}")
        _long_range_lines(model, lines)
        return "\n".join(lines)

    from metatomic.torch import load_atomistic_model

    extra = {"torch-version": "", "metatomic-version": ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra)
    atomistic = load_atomistic_model(path, extensions_directory=extensions)
    capabilities = atomistic.capabilities()
    metadata = atomistic.metadata()
    lines.append(f"file: {path} (exported metatomic model)")
    lines.append(f"name: {metadata.name}")
    if metadata.description:
        lines.append(f"description: {metadata.description}")
    lines.append(
        f"saved with: torch {_text(extra['torch-version'])}, "
        f"metatomic-torch {_text(extra['metatomic-version'])}"
    )
    lines.append(f"dtype: {capabilities.dtype}")
    lines.append(f"atomic types: {list(capabilities.atomic_types)}")
    lines.append(f"length unit: {capabilities.length_unit}")
    lines.append(f"interaction range: {capabilities.interaction_range}")
    lines.append("outputs:")
    for name, output in capabilities.outputs.items():
        per = f"samples: {output.sample_kind}"
        unit = f", unit {output.unit}" if output.unit else ""
        lines.append(f"  {name} ({per}{unit})")
    hypers = _stored_hypers(atomistic)
    if hypers:
        lines.append(f"lorem_mta version: {hypers.pop('lorem_mta_version', 'unknown')}")
        lines.append("hyperparameters:")
        for name, value in hypers.items():
            lines.append(f"  {name}: {value}")
    else:
        lines.append("hyperparameters: not stored in this file")
    _long_range_lines(atomistic, lines)
    return "\n".join(lines)


def _long_range_lines(model: torch.nn.Module, lines: List[str]) -> None:
    settings = long_range_settings(model)
    if settings is None:
        lines.append("long range: none")
        return
    lines.append("long range (change with `lorem-mta export`):")
    for name, value in settings.items():
        lines.append(f"  {name}: {value}")


def _stored_hypers(model: torch.nn.Module) -> Dict[str, Any]:
    for _, module in model.named_modules():
        text = getattr(module, "hypers_json", "")
        if isinstance(text, str) and text:
            return json.loads(text)
    return {}


def _update_stored_hypers(model: torch.nn.Module) -> None:
    """Write the long-range settings in use into the stored hyperparameters."""
    found = planners(model)
    if not found:
        return
    for _, module in model.named_modules():
        text = getattr(module, "hypers_json", "")
        if isinstance(text, str) and text:
            hypers = json.loads(text)
            hypers["long_range_method"] = found[0].method
            accuracy = found[0].accuracy
            hypers["long_range_accuracy"] = accuracy if accuracy > 0 else None
            module.hypers_json = json.dumps(hypers)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def default_extensions(output: str) -> str:
    """The ``extensions`` folder next to ``output``."""
    return os.path.join(os.path.dirname(os.path.abspath(output)), "extensions")
