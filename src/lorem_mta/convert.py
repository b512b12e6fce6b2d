"""Import lorem-jax parameters into :py:class:`~lorem_mta.modules.LoremBackbone`.

lorem-jax stores a flax parameter tree; flattened, its leaves are named like
``Update_1/MLP_0/Dense_0/kernel``. flax numbers sub-modules of the same class in the order
they are created, so the name of every leaf follows from the hyperparameters alone:
:py:func:`flax_names` replays that order and pairs every flax module with the matching
``LoremBackbone`` sub-module. The conventions differ only in layout:

* flax ``Dense`` kernels are ``(in, out)``; ``torch.nn.Linear.weight`` is ``(out, in)``;
* e3x ``Dense`` stores one ``(in, out)`` kernel per degree under ``{l}+`` / ``{l}-``;
  :py:class:`~lorem_mta.modules.tensor_product.EquivariantLinear` stacks them;
* e3x ``Tensor`` kernels ``(1, L1+1, 1, L2+1, 1, L3+1, F)`` lose their parity axes;
* the Clebsch-Gordan coefficients are built to be identical to e3x's once the ``m``
  order is converted, and weights never carry an ``m`` index, so no weight needs a
  permutation or a sign change.

lorem-jax's ``LoremBEC`` (Born effective charges) has the same trunk plus one
``PerParticleTensorPredictor`` per stage; its parameters are recognised by those leaves
(or ``"bec": true`` in the hyperparameters) and load into a backbone with ``bec=True``.
The predictor's last tensor product has a pseudotensor output axis, of which only the
even-parity half is used (:py:mod:`lorem_mta.modules.bec`), so the odd half of that
kernel is dropped.

Two inputs are accepted: a flattened ``.npz`` (``param/<flax path>`` leaves and
``hypers_json``, see :py:func:`read_jax_npz`) and a checkpoint of a lorem-jax training run
(``lorem-train``, see :py:mod:`lorem_mta.jax_run`).
"""

import difflib
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .modules import LoremBackbone

#: lorem-jax ``Lorem`` hyperparameters with their defaults
JAX_DEFAULTS = {
    "cutoff": 5.0,
    "max_degree": 6,
    "max_degree_lr": 2,
    "num_features": 128,
    "num_radial": 32,
    "num_species": 8,
    "num_spherical_features": 8,
    "cutoff_fn": "cosine_cutoff",
    "radial_basis": "basic_bernstein",
    "lr": True,
    "num_message_passing": 0,
    "equivariant_message_passing": True,
    "initialize_node_features": True,
}

#: lorem-jax ``LoremBEC`` defaults: no equivariant messages, no initial node features
JAX_BEC_DEFAULTS = {
    **JAX_DEFAULTS,
    "equivariant_message_passing": False,
    "initialize_node_features": False,
}

BACKBONE_HYPERS = [k for k in JAX_DEFAULTS if k not in ("cutoff_fn", "radial_basis")]
BACKBONE_HYPERS.append("bec")

#: the type every lorem-jax hyperparameter must have, and the smallest allowed value
_HYPER_TYPES = {
    "cutoff": ("a number", 0.0),
    "max_degree": ("an integer", 0),
    "max_degree_lr": ("an integer", 0),
    "num_message_passing": ("an integer", 0),
    "num_features": ("an integer", 1),
    "num_radial": ("an integer", 1),
    "num_species": ("an integer", 1),
    "num_spherical_features": ("an integer", 1),
    "lr": ("true or false", None),
    "equivariant_message_passing": ("true or false", None),
    "initialize_node_features": ("true or false", None),
    "bec": ("true or false", None),
    "cutoff_fn": ("a string", None),
    "radial_basis": ("a string", None),
}

#: flax module name of the Born-effective-charge heads of ``LoremBEC``
BEC_HEAD = "PerParticleTensorPredictor"


class ParameterMismatchError(ValueError, RuntimeError):
    """Parameters whose shapes do not fit the hyperparameters.

    Also a ``RuntimeError``, which ``torch.nn.Module.load_state_dict`` raised before.
    """


class _Counter:
    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return f"{kind}_{n}"


def flax_names(hypers: Dict) -> List[Tuple[str, str, str]]:
    """Pair every flax module of ``lorem.Lorem`` with a ``LoremBackbone`` sub-module.

    :param hypers: lorem-jax hyperparameters (missing keys take the defaults; with
        ``"bec": true`` those of ``LoremBEC``)
    :return: list of ``(flax path, torch path, kind)`` where kind is one of
        ``embed``, ``linear``, ``mlp``, ``update``, ``e3x_dense``, ``tensor``,
        ``tensor_dense``, ``message_pass``, ``bec_head``
    """
    h = _with_defaults(hypers)
    name = _Counter()
    heads = _Counter()

    def bec_head() -> List[Tuple[str, str, str]]:
        if not h["bec"]:
            return []
        flax = heads(BEC_HEAD)
        return [(flax, f"bec_heads.{flax.rsplit('_', 1)[1]}", "bec_head")]

    pairs = [("Initial_0/ChemicalEmbedding_0/Embed_0", "embedding.embedding", "embed")]
    pairs.append(
        (
            name("RadialCoefficients") + "/MLP_0",
            "initial.radial_coefficients.mlp",
            "mlp",
        )
    )
    if h["initialize_node_features"]:
        pairs.append((name("Dense"), "initial.node_embedding", "linear"))
    pairs += [
        (name("Dense"), "initial.message", "linear"),
        (name("Update"), "initial.message_update", "update"),
        (name("Dense"), "initial.spherical_coefficients.dense", "linear"),
        (name("TensorDense"), "initial.tensor_dense", "tensor_dense"),
        (name("Update"), "initial.norm_update", "update"),
        (name("MLP"), "initial.readout", "mlp"),
    ]
    pairs += bec_head()
    for k in range(h["num_message_passing"]):
        step = f"steps.{k}"
        pairs += [
            (
                name("RadialCoefficients") + "/MLP_0",
                f"{step}.radial_coefficients.mlp",
                "mlp",
            ),
            (name("Dense"), f"{step}.message", "linear"),
            (name("Update"), f"{step}.message_update", "update"),
        ]
        if h["equivariant_message_passing"]:
            eq = f"{step}.equivariant"
            pairs += [
                (name("Dense"), f"{eq}.spherical_coefficients.dense", "linear"),
                (name("MessagePass"), f"{eq}.message_pass", "message_pass"),
                (name("Tensor"), f"{eq}.tensor", "tensor"),
                (name("Dense"), f"{eq}.node_dense", "e3x_dense"),
                (name("Dense"), f"{eq}.message_dense", "e3x_dense"),
                (name("Update"), f"{eq}.norm_update", "update"),
            ]
        pairs.append((name("MLP"), f"{step}.readout", "mlp"))
        pairs += bec_head()
    if h["lr"]:
        pairs += [
            (name("MLP"), "long_range.scalar_charge", "mlp"),
            (name("TensorDense"), "long_range.spherical_charges", "tensor_dense"),
            (name("Dense"), "long_range.potential_dense", "e3x_dense"),
            (name("Tensor"), "long_range.potential_tensor", "tensor"),
            (name("Update"), "long_range.update", "update"),
            (name("MLP"), "long_range_readout", "mlp"),
        ]
        pairs += bec_head()
    return pairs


def check_jax_hypers(hypers: Dict, source: str) -> None:
    """Refuse unknown lorem-jax hyperparameters and values of the wrong type or range.

    lorem-jax's ``Lorem`` would itself reject an unknown keyword; without this check a
    misspelt name (``max_degre``) would silently take the default, ``cutoff: -5`` would
    fail deep in the Ewald set-up and ``cutoff: "5"`` in TorchScript.

    :param hypers: the hyperparameters (``hypers_json`` of a ``.npz``, the model section
        of a training run's ``model.yaml``)
    :param source: where they come from, for the messages (e.g. the file name)
    :raises ValueError: naming the key, the value and what is expected; unknown keys
        come with the closest known names
    """
    inputs = hypers.get("inputs")
    if inputs:
        raise ValueError(f"{source}: models with extra inputs ({inputs}) are not supported")
    unknown = sorted(set(hypers) - set(_HYPER_TYPES) - {"inputs"})
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(_HYPER_TYPES), n=2, cutoff=0.6)
            if close:
                hints.append(f"'{name}': did you mean {' or '.join(map(repr, close))}?")
        raise ValueError(
            f"{source}: unknown lorem-jax hyperparameters {unknown}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f". The known ones are {sorted(_HYPER_TYPES)}"
        )
    for name, value in hypers.items():
        if name in _HYPER_TYPES:
            _check_hyper(name, value, source)


def _check_hyper(name: str, value, source: str) -> None:
    """One hyperparameter against :py:data:`_HYPER_TYPES` (``bool`` is not a number)."""
    expected, minimum = _HYPER_TYPES[name]
    is_bool = isinstance(value, (bool, np.bool_))
    is_int = isinstance(value, (int, np.integer)) and not is_bool
    valid = {
        "a number": (is_int or isinstance(value, (float, np.floating))) and not is_bool,
        "an integer": is_int,
        "true or false": is_bool,
        "a string": isinstance(value, str),
    }[expected]
    if not valid:
        raise ValueError(
            f"{source}: hyperparameter '{name}' must be {expected}, got {value!r} "
            f"({type(value).__name__})"
        )
    if minimum is None:
        return
    if name == "cutoff" and not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{source}: hyperparameter 'cutoff' must be > 0, got {value!r}")
    if value < minimum:
        raise ValueError(
            f"{source}: hyperparameter '{name}' must be at least {minimum}, got {value!r}"
        )


def _with_defaults(hypers: Dict) -> Dict:
    """``hypers`` completed with the defaults of ``Lorem`` or, for BEC, ``LoremBEC``."""
    bec = bool(hypers.get("bec", False))
    return {**(JAX_BEC_DEFAULTS if bec else JAX_DEFAULTS), "bec": bec, **hypers}


class _Leaves(dict):
    """Parameter leaves with a clear error for a missing one."""

    def __missing__(self, key: str):
        raise KeyError(
            f"the lorem-jax parameters have no leaf '{key}': the hyperparameters do not "
            "match the parameters"
        )


def _e3x_dense(params: Dict[str, np.ndarray], prefix: str) -> np.ndarray:
    kernels = []
    l = 0
    while f"{prefix}/{l}{'+' if l % 2 == 0 else '-'}/kernel" in params:
        kernels.append(params[f"{prefix}/{l}{'+' if l % 2 == 0 else '-'}/kernel"])
        l += 1
    if not kernels:
        raise KeyError(f"no e3x Dense kernels under '{prefix}'")
    return np.stack(kernels)


def _tensor_kernel(kernel: np.ndarray) -> np.ndarray:
    return kernel[0, :, 0, :, 0, :, :]


def _biased_e3x_dense(
    params: Dict[str, np.ndarray], prefix: str, target: str
) -> Dict[str, np.ndarray]:
    return {
        f"{target}.weight": _e3x_dense(params, prefix),
        f"{target}.bias": params[f"{prefix}/0+/bias"],
    }


def _mlp(params: Dict[str, np.ndarray], prefix: str, target: str) -> Dict[str, np.ndarray]:
    out = {}
    k = 0
    while f"{prefix}/Dense_{k}/kernel" in params:
        out[f"{target}.layers.{k}.weight"] = params[f"{prefix}/Dense_{k}/kernel"].T
        out[f"{target}.layers.{k}.bias"] = params[f"{prefix}/Dense_{k}/bias"]
        k += 1
    return out


def jax_to_state_dict(params: Dict[str, np.ndarray], hypers: Dict) -> Dict[str, torch.Tensor]:
    """Translate a flattened lorem-jax parameter tree into a backbone state dict.

    :param params: leaves keyed by flax path without the ``param/`` prefix, e.g.
        ``"Dense_0/kernel"``
    :param hypers: lorem-jax hyperparameters
    :return: state dict for :py:class:`~lorem_mta.modules.LoremBackbone` (float64)
    :raises KeyError: if a leaf is missing or some leaves are not used
    """
    params = _Leaves(params)
    state: Dict[str, np.ndarray] = {}
    dropped = 0  # odd-parity half of the BEC heads' last tensor product kernel
    for flax, torch_name, kind in flax_names(hypers):
        if kind == "embed":
            state[f"{torch_name}.weight"] = params[f"{flax}/embedding"]
        elif kind == "linear":
            state[f"{torch_name}.weight"] = params[f"{flax}/kernel"].T
            if f"{flax}/bias" in params:
                state[f"{torch_name}.bias"] = params[f"{flax}/bias"]
        elif kind == "mlp":
            state.update(_mlp(params, flax, torch_name))
        elif kind == "update":
            for k in range(2):
                state.update(_mlp(params, f"{flax}/MLP_{k}", f"{torch_name}.mlp_{k}"))
                state[f"{torch_name}.norm_{k}.weight"] = params[f"{flax}/LayerNorm_{k}/scale"]
                state[f"{torch_name}.norm_{k}.bias"] = params[f"{flax}/LayerNorm_{k}/bias"]
        elif kind == "e3x_dense":
            state[f"{torch_name}.weight"] = _e3x_dense(params, flax)
        elif kind == "tensor":
            state[f"{torch_name}.weight"] = _tensor_kernel(params[f"{flax}/kernel"])
        elif kind == "tensor_dense":
            state[f"{torch_name}.dense.weight"] = _e3x_dense(params, f"{flax}/dense")
            state[f"{torch_name}.tensor.weight"] = _tensor_kernel(
                params[f"{flax}/tensor/kernel"]
            )
        elif kind == "bec_head":
            for k in range(3):
                state.update(
                    _biased_e3x_dense(params, f"{flax}/Dense_{k}", f"{torch_name}.dense_{k}")
                )
            state.update(
                _biased_e3x_dense(
                    params, f"{flax}/TensorDense_0/dense", f"{torch_name}.projection"
                )
            )
            kernel = params[f"{flax}/TensorDense_0/tensor/kernel"]  # [1, L+1, 1, L+1, 2, 3, 1]
            state[f"{torch_name}.tensor.weight"] = _tensor_kernel(kernel)
            dropped += kernel[:, :, :, :, 1:].size
        elif kind == "message_pass":
            state[f"{torch_name}.filter.weight"] = _e3x_dense(params, f"{flax}/filter")
            state[f"{torch_name}.tensor.weight"] = _tensor_kernel(
                params[f"{flax}/tensor/kernel"]
            )
    n_used = sum(v.size for v in state.values()) + dropped
    n_given = sum(v.size for v in params.values())
    if n_used != n_given:
        raise KeyError(
            f"the parameter tree has {n_given} numbers but only {n_used} map onto the "
            "model: the hyperparameters do not match the parameters"
        )
    return {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in state.items()
    }


def read_jax_npz(path: str) -> Tuple[Dict[str, np.ndarray], Dict]:
    """Read a flattened lorem-jax parameter file (``param/<flax path>`` + ``hypers_json``).

    :param path: ``.npz`` file
    :return: parameters (keys without ``param/``) and hyperparameters
    :raises ValueError: if the file is not a lorem-jax parameter file
    """
    try:
        # no pickles: a parameter file holds plain arrays only
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as e:
        raise ValueError(f"could not read '{path}' as a .npz parameter file: {e}") from e
    if "hypers_json" not in arrays:
        raise ValueError(f"'{path}' has no 'hypers_json' entry: not a lorem-jax export")
    try:
        hypers = json.loads(str(arrays["hypers_json"]))
    except ValueError as e:
        raise ValueError(f"'{path}': 'hypers_json' is not valid JSON ({e})") from e
    if not isinstance(hypers, dict):
        raise ValueError(f"'{path}': 'hypers_json' does not hold a dictionary")
    check_jax_hypers(hypers, f"'{path}' (hypers_json)")
    params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
    if not params:
        raise ValueError(f"'{path}' has no 'param/...' entries: not a lorem-jax export")
    if "bec" not in hypers and any(k.startswith(BEC_HEAD + "_") for k in params):
        hypers["bec"] = True  # a LoremBEC export
    return params, hypers


def backbone_hypers(hypers: Dict) -> Dict:
    """Backbone arguments from lorem-jax hyperparameters (rejecting unsupported ones).

    :param hypers: lorem-jax hyperparameters
    :return: keyword arguments for :py:class:`~lorem_mta.modules.LoremBackbone`
    :raises ValueError: for cutoff functions or radial bases other than LOREM's
    """
    h = _with_defaults(hypers)
    if h["cutoff_fn"] != "cosine_cutoff" or h["radial_basis"] != "basic_bernstein":
        raise ValueError(
            f"only cutoff_fn='cosine_cutoff' and radial_basis='basic_bernstein' are "
            f"supported, got {h['cutoff_fn']!r} and {h['radial_basis']!r}"
        )
    options = {k: h[k] for k in BACKBONE_HYPERS}
    # lorem-jax's model: exact norms and the latent charges as they come
    options.update(norm_smoothing=0.0, neutral_charges=False)
    return options


def backbone_from_jax(
    params: Dict[str, np.ndarray], hypers: Dict, dtype: Optional[torch.dtype] = None
) -> LoremBackbone:
    """Build a backbone carrying lorem-jax parameters.

    :param params: flattened parameter tree (see :py:func:`jax_to_state_dict`)
    :param hypers: lorem-jax hyperparameters
    :param dtype: dtype of the result (float64 by default)
    :return: the backbone, in eval mode
    """
    bad = [
        f"'{name}' ({int((~np.isfinite(value)).sum())} of {value.size} values)"
        for name, value in params.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()
    ]
    if bad:
        raise ValueError(
            "lorem-jax parameters are NaN or infinite: "
            + ", ".join(bad[:3])
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            + ". Such a model gives NaN energies and forces: the training diverged or "
            "the file is damaged"
        )
    model = LoremBackbone(**backbone_hypers(hypers)).to(torch.float64)
    state = jax_to_state_dict(params, hypers)
    expected = dict(model.named_parameters())
    missing = set(expected) - set(state)
    if missing:
        raise KeyError(f"parameters missing from the lorem-jax tree: {sorted(missing)}")
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        raise ParameterMismatchError(
            "the hyperparameters do not match the parameters, wrong shapes: "
            + ", ".join(wrong[:3])
            + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        )
    model.load_state_dict(state, strict=False)
    return model.to(dtype or torch.float64).eval()


# -- lorem-jax training runs -------------------------------------------------------------


#: the files of a checkpoint's ``model/`` folder (marathon ``emit.checkpoint.save``)
def read_jax(
    path: str, checkpoint: Optional[str] = None
) -> Tuple[Dict[str, np.ndarray], Dict, Optional[Dict[int, float]]]:
    """Read lorem-jax parameters from a ``.npz`` export or a training run.

    :param path: ``.npz`` file (see :py:func:`read_jax_npz`) or training run (see
        :py:func:`lorem_mta.jax_run.find_jax_checkpoint`)
    :param checkpoint: checkpoint name for a ``run/`` or experiment folder
    :return: parameters, hyperparameters and the energy baseline (``None`` for ``.npz``)
    """
    if os.path.isfile(path) and os.path.basename(path) != "model.msgpack":
        if checkpoint is not None:
            raise ValueError("checkpoint only applies to lorem-jax training runs")
        params, hypers = read_jax_npz(path)
        return params, hypers, None
    from .jax_run import read_jax_run

    return read_jax_run(path, checkpoint)


def model_from_jax(
    path: str,
    atomic_types: Optional[List[int]] = None,
    dtype: torch.dtype = torch.float64,
    checkpoint: Optional[str] = None,
):
    """Build a :py:class:`~lorem_mta.model.LoremModel` from lorem-jax parameters.

    :param path: ``.npz`` with ``param/<flax path>`` leaves and ``hypers_json``, or a
        lorem-jax training run (checkpoint, ``run/`` or experiment folder, see
        :py:func:`lorem_mta.jax_run.find_jax_checkpoint`)
    :param atomic_types: atomic numbers the model accepts; by default the species of the
        run's energy baseline (the species it was trained on), or every element of the
        species embedding table (1-99) for a ``.npz``
    :param dtype: dtype of the model
    :param checkpoint: checkpoint name for a ``run/`` or experiment folder
    :return: the model, in eval mode; for a run, its energies include the baseline
    """
    from .model import LoremModel

    params, hypers, baseline = read_jax(path, checkpoint)
    backbone = backbone_from_jax(params, hypers, dtype)
    n_embedded = params["Initial_0/ChemicalEmbedding_0/Embed_0/embedding"].shape[0]
    if atomic_types is None:
        atomic_types = sorted(baseline) if baseline else list(range(1, n_embedded))
    bad = [t for t in atomic_types if not 0 < t < n_embedded]
    if bad:
        raise ValueError(
            f"atomic types {bad} are outside the species embedding (1..{n_embedded - 1})"
        )
    if baseline is not None:
        bad_baseline = sorted(t for t, e in baseline.items() if not np.isfinite(e))
        if bad_baseline:
            raise ValueError(
                f"the energy baseline of atomic types {bad_baseline} is NaN or infinite"
            )
        unknown = sorted(set(atomic_types) - set(baseline))
        if unknown:
            raise ValueError(
                f"atomic types {unknown} have no energy baseline: the run was trained on "
                f"{sorted(baseline)}"
            )
    return LoremModel(backbone, atomic_types, baseline).to(dtype).eval()


def convert_jax(
    path: str,
    output: str,
    dtype: torch.dtype = torch.float32,
    atomic_types: Optional[List[int]] = None,
    extensions: Optional[str] = None,
    checkpoint: Optional[str] = None,
    long_range_method: str = "auto",
    long_range_accuracy: Optional[float] = None,
    memory_limit_gb: Optional[float] = None,
) -> None:
    """Convert lorem-jax parameters into an exported metatomic model.

    :param path: ``.npz`` with ``param/<flax path>`` leaves and ``hypers_json``, or a
        lorem-jax training run (see :py:func:`lorem_mta.jax_run.find_jax_checkpoint`)
    :param output: exported model file, e.g. ``model.pt``
    :param dtype: dtype of the exported model
    :param atomic_types: atomic numbers the model accepts (default: the species of a
        run's baseline, 1-99 for a ``.npz``)
    :param extensions: folder for the compiled extensions the model needs
    :param checkpoint: checkpoint name for a ``run/`` or experiment folder
    :param long_range_method: ``"auto"`` (cost-based choice per structure), ``"ewald"``
        (lorem-jax's exact reference sum), ``"pme"`` or ``"direct"``
    :param long_range_accuracy: target accuracy, ``None`` for the reference settings
    :param memory_limit_gb: memory limit of the long-range sum of one structure (GiB)
    """
    from .model import export
    from .model_files import hypers_json, set_long_range

    model = model_from_jax(path, atomic_types, torch.float64, checkpoint)
    if model.has_long_range:
        set_long_range(model, long_range_method, long_range_accuracy, memory_limit_gb)
    _, hypers, _ = read_jax(path, checkpoint)
    stored = {
        **_with_defaults(hypers),
        **backbone_hypers(hypers),
        "converted_from": "lorem-jax",
    }
    if model.has_long_range:
        stored["long_range_method"] = long_range_method
        stored["long_range_accuracy"] = long_range_accuracy
    model.hypers_json = hypers_json(stored)
    export(model, output, dtype, collect_extensions=extensions)
