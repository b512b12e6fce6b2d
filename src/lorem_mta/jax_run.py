"""Read lorem-jax training runs (``lorem-train`` checkpoints) without jax or flax.

marathon's ``save_checkpoints`` (used by ``lorem-train``) writes, for every checkpointer
(``R2_E+F``, ``MAE_E``, ``MAE_F``, ...), ``run/checkpoints/<name>/`` with

* ``model/model.yaml``: ``{<class path>: {hyperparameters}}``, e.g.
  ``lorem.models.mlip.Lorem``;
* ``model/model.msgpack``: the flax variables ``{"params": tree}`` serialised with
  ``flax.serialization.to_bytes`` (float32 after a default training run);
* ``model/baseline.yaml``: ``{"elemental": {Z: energy}}``, the per-species energy
  fitted on the training set (or given in ``model.yaml``), which lorem-jax's
  calculator adds to the network energy;
* ``state.msgpack``, ``metrics.yaml``, ``config.yaml``, ``info.txt``, ``plot/``,
  which are not needed here.

lorem-jax's ASE calculator (``lorem.calculator.Calculator.from_checkpoint``) reads the
same three ``model/`` files. It differs from the converted model only in how it runs
the network: it casts positions, cell and parameters to float32 and builds its
neighbour list with ``cutoff + skin`` (0.25 A by default) while deriving the Ewald
smearing and wavelength from the cutoff, so with a skin the real-space Ewald sum also
runs over pairs between 5.00 and 5.25 A (up to ~1e-5 relative in periodic energies).
The converted model is the ``skin=0`` one, as in training, where the neighbour list is
built at the cutoff. No other convention is needed: lorem-jax 0.2.0 / jax-pme include
the 1/2 of the non-periodic Coulomb sum (the x2 of paper-era checkpoints does not
apply). Against the float32 calculator, expect ~1e-7...1e-6 relative differences in
energy (float32, and e3x's approximate Bernstein log-binomials, see
:py:mod:`lorem_mta.modules.radial`); ``tests/resources/jax_run`` has measured numbers.
"""

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import numpy as np

from .convert import check_jax_hypers

RUN_FILES = ("model.yaml", "model.msgpack", "baseline.yaml")

#: model classes of lorem-jax that :py:class:`~lorem_mta.modules.LoremBackbone` implements
JAX_MODEL_CLASSES = ("lorem.models.mlip.Lorem", "lorem.Lorem", "Lorem")
#: lorem-jax's Born-effective-charge model (converted with ``bec=True``)
JAX_BEC_CLASSES = ("lorem.models.bec.LoremBEC", "lorem.LoremBEC", "LoremBEC")


def _ext_hook(code: int, payload: bytes) -> Any:
    """Decode flax's msgpack extensions 1 (ndarray) and 3 (numpy scalar)."""
    if code not in (1, 3):
        raise ValueError(f"unsupported msgpack extension type {code}")
    shape, dtype, buffer = msgpack.unpackb(payload, raw=False)
    array = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape).copy()
    return array[()] if code == 3 else array


def _unchunk(tree: Any) -> Any:
    """Undo flax's splitting of arrays larger than 1 GiB (``__msgpack_chunked_array__``)."""
    if not isinstance(tree, dict):
        return tree
    if tree.get("__msgpack_chunked_array__"):
        shape = [tree["shape"][str(k)] for k in range(len(tree["shape"]))]
        chunks = [tree["chunks"][str(k)] for k in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def read_msgpack(path: str) -> Any:
    """Read a file written by ``flax.serialization.to_bytes`` (no flax needed).

    :param path: ``.msgpack`` file
    :return: nested dictionaries with numpy array leaves
    :raises ValueError: if the file is not such a file
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for bad data
        raise ValueError(f"could not read '{path}' as a flax msgpack file: {e}") from e
    return _unchunk(tree)


def _flatten(tree: Dict, prefix: str = "") -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, np.ndarray):
            out[name] = value
        else:
            raise ValueError(f"parameter '{name}' is not an array ({type(value).__name__})")
    return out


def _read_yaml(path: str) -> Any:
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading a lorem-jax training run needs PyYAML: pip install pyyaml"
        ) from e
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"could not parse '{path}': {e}") from e


def _checkpoint_names(checkpoints: str) -> List[str]:
    return sorted(
        name
        for name in os.listdir(checkpoints)
        if os.path.isdir(os.path.join(checkpoints, name)) and not name.endswith(".backup")
    )


def find_jax_checkpoint(path: str, checkpoint: Optional[str] = None) -> str:
    """Locate the ``model/`` folder of a lorem-jax checkpoint.

    :param path: any of: a checkpoint folder (``run/checkpoints/R2_E+F``, what
        ``lorem.calculator.Calculator.from_checkpoint`` takes), its ``model/`` folder or
        ``model/model.msgpack``, a ``run/`` folder or the experiment folder holding
        ``run/``
    :param checkpoint: which checkpoint of a ``run/`` or experiment folder (a folder
        name under ``run/checkpoints``); by default the one whose name starts with
        ``R2_`` (best summed validation R^2, the paper's choice)
    :return: path of the folder holding ``model.yaml``, ``model.msgpack`` and
        ``baseline.yaml``
    :raises ValueError: if ``path`` is none of these or a file is missing
    """
    if os.path.isfile(path):
        if os.path.basename(path) != "model.msgpack":
            raise ValueError(f"'{path}' is neither a .npz file nor a lorem-jax model.msgpack")
        path = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"no such file or folder: '{path}'")

    for run in (path, os.path.join(path, "run")):
        checkpoints = os.path.join(run, "checkpoints")
        if os.path.isdir(checkpoints):
            names = _checkpoint_names(checkpoints)
            if checkpoint is None:
                best = [n for n in names if n.startswith("R2_")]
                if len(best) != 1:
                    raise ValueError(
                        f"'{run}' has the checkpoints {names}; choose one "
                        "(--checkpoint NAME / checkpoint=NAME)"
                    )
                checkpoint = best[0]
            if checkpoint not in names:
                raise ValueError(
                    f"no checkpoint '{checkpoint}' in '{checkpoints}' (it has {names})"
                )
            path = os.path.join(checkpoints, checkpoint)
            break
    else:
        if checkpoint is not None:
            raise ValueError(
                f"'{path}' is a single checkpoint: checkpoint={checkpoint!r} "
                "only applies to a run/ or experiment folder"
            )

    if os.path.isdir(os.path.join(path, "model")):
        path = os.path.join(path, "model")
    present = [f for f in RUN_FILES if os.path.isfile(os.path.join(path, f))]
    if not present:
        raise ValueError(
            f"'{path}' is not a lorem-jax training run: expected a checkpoint folder with "
            "model/{model.yaml, model.msgpack, baseline.yaml}, a run/ folder or an "
            "experiment folder holding run/checkpoints/"
        )
    missing = [f for f in RUN_FILES if f not in present]
    if missing:
        raise ValueError(f"incomplete lorem-jax checkpoint '{path}': missing {missing}")
    return path


def _hypers_from_model_yaml(config: Any, path: str) -> Dict:
    if isinstance(config, dict) and set(config) == {"model"}:
        config = config["model"]  # the experiment's own model.yaml wraps it in 'model:'
    if not (isinstance(config, dict) and len(config) == 1):
        raise ValueError(f"'{path}' does not describe one model: {config!r}")
    ((handle, hypers),) = config.items()
    if handle not in JAX_MODEL_CLASSES + JAX_BEC_CLASSES:
        raise ValueError(
            f"'{path}' describes a {handle} model; only lorem-jax's Lorem "
            f"({JAX_MODEL_CLASSES[0]}) and LoremBEC ({JAX_BEC_CLASSES[0]}) can be converted"
        )
    hypers = dict(hypers or {})
    if handle in JAX_BEC_CLASSES:
        hypers["bec"] = True
    check_jax_hypers(hypers, f"'{path}'")
    hypers.pop("inputs", None)
    return hypers


def _baseline_from_yaml(baseline: Any, path: str) -> Dict[int, float]:
    if not (isinstance(baseline, dict) and isinstance(baseline.get("elemental"), dict)):
        raise ValueError(f"'{path}' has no 'elemental' per-species energies")
    out = {}
    for z, energy in baseline["elemental"].items():
        try:
            z, energy = int(z), float(energy)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad baseline entry {z!r}: {energy!r} in '{path}'") from e
        if not 0 < z < 100 or not math.isfinite(energy):
            raise ValueError(f"bad baseline entry {z}: {energy} in '{path}'")
        out[z] = energy
    if not out:
        raise ValueError(f"the baseline in '{path}' is empty")
    return out


def read_jax_run(
    path: str, checkpoint: Optional[str] = None
) -> Tuple[Dict[str, np.ndarray], Dict, Dict[int, float]]:
    """Read a checkpoint of a lorem-jax training run (``lorem-train``).

    :param path: checkpoint, ``run/`` or experiment folder, see
        :py:func:`find_jax_checkpoint`
    :param checkpoint: checkpoint name for a ``run/`` or experiment folder
    :return: parameters (flax paths without ``params/``), hyperparameters and the
        per-species energy baseline ``{atomic number: energy}``
    :raises ValueError: if a file is missing or not what lorem-jax writes
    """
    folder = find_jax_checkpoint(path, checkpoint)
    model_yaml = os.path.join(folder, "model.yaml")
    hypers = _hypers_from_model_yaml(_read_yaml(model_yaml), model_yaml)
    baseline_yaml = os.path.join(folder, "baseline.yaml")
    baseline = _baseline_from_yaml(_read_yaml(baseline_yaml), baseline_yaml)
    msgpack = os.path.join(folder, "model.msgpack")
    tree = read_msgpack(msgpack)
    if not (isinstance(tree, dict) and isinstance(tree.get("params"), dict)):
        raise ValueError(f"'{msgpack}' does not hold flax variables {{'params': ...}}")
    params = {k: np.asarray(v, dtype=np.float64) for k, v in _flatten(tree["params"]).items()}
    return params, hypers, baseline
