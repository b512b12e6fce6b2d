"""Register ``lorem_mta`` with metatrain's ``mtt`` as ``experimental.lorem_mta``.

metatrain 2026.4 only finds architectures inside its own package: it imports
``metatrain.<name>`` and ``metatrain.<name>.documentation``, and
``find_all_architectures()`` lists the folders of the package (it is called on every
checkpoint load, including the final reload of ``mtt train``). This stdlib-only module
(importing it imports neither torch, metatrain nor ``lorem_mta``) installs an import hook
that

* makes ``metatrain.experimental.lorem_mta`` an alias of :py:mod:`lorem_mta.architecture`
  and ``metatrain.experimental.lorem_mta.documentation`` an alias of
  :py:mod:`lorem_mta.documentation` (the alias modules get a copy of the namespace);
* wraps ``find_all_architectures`` (in ``metatrain.utils.architectures`` and in the copy
  ``metatrain.utils.io`` imported by name) so that it also returns
  ``experimental.lorem_mta``, and ``preload_documentation_module`` so that the JSON
  schema of the training options can be generated;
* wraps ``metatrain.cli.train.train_model`` so that restarting (``--restart``) or
  fine-tuning (``finetune: read_from``) a LOREM run from a checkpoint of another
  architecture, or the other way round, is refused with a message naming both
  architectures (metatrain would pass LOREM's hyperparameters to the other
  architecture's ``restart`` and fail with e.g. ``KeyError: 'max_degree'``).

``lorem_mta_mtt.pth`` (installed at the root of site-packages) calls :py:func:`register`
at interpreter start-up, so the plain ``mtt`` command works. ``lorem-mtt`` (this module's
:py:func:`main`) does the same for interpreters that skip ``.pth`` files (``python -S``).

It also points the links of metatrain's hyperparameter errors for this architecture
(which would go to a page of metatrain's documentation that does not exist) to the file
that documents every option, ``lorem_mta/documentation.py`` (rendered on the
"Hyperparameters" page of the lorem_mta documentation).

Written against metatrain 2026.4 (the dependency is pinned to ``<2026.5``); switch to an
upstream registration mechanism once metatrain has one (metatrain issue #879). With a
metatrain whose internals differ, the hook does not raise: it prints one message naming
the installed and the supported metatrain versions (at most once per process), leaves
metatrain unchanged (its own architectures keep working) and, when ``mtt`` then loads
``experimental.lorem_mta``, the import error says the same.
"""

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import warnings

#: name of the architecture in metatrain options files and checkpoints
ARCHITECTURE_NAME = "experimental.lorem_mta"
#: the metatrain release series the hook is written for (the pin in pyproject.toml)
SUPPORTED_METATRAIN = "2026.4"
SUPPORTED_REQUIREMENT = "metatrain>=2026.4.1,<2026.5"

_ALIASES = {
    "metatrain." + ARCHITECTURE_NAME: "lorem_mta.architecture",
    "metatrain." + ARCHITECTURE_NAME + ".documentation": "lorem_mta.documentation",
}
_ARCHITECTURES_MODULE = "metatrain.utils.architectures"
_TRAIN_MODULE = "metatrain.cli.train"
_MARKER = "_lorem_mta_mtt_hook"
# module attributes that belong to the alias itself and must not be copied over
_MODULE_DUNDERS = {
    "__name__",
    "__spec__",
    "__loader__",
    "__package__",
    "__path__",
    "__file__",
    "__cached__",
    "__builtins__",
}
_PYDANTIC_MODULE = "metatrain.utils.pydantic"
_REPORTED = []


def metatrain_version() -> str:
    """The installed metatrain version (without importing metatrain).

    :return: the version string, or ``"unknown"``
    """
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("metatrain")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def supported_metatrain() -> bool:
    """Whether the installed metatrain is of the release series the hook is written for.

    :return: true for metatrain ``2026.4.*``
    """
    return metatrain_version().startswith(SUPPORTED_METATRAIN + ".")


def unsupported_message(reason: str) -> str:
    """The message for a metatrain that the hook cannot patch.

    :param reason: what failed
    :return: one paragraph naming the installed and the supported versions
    """
    return (
        f"lorem_mta: cannot register the {ARCHITECTURE_NAME} architecture with "
        f"metatrain {metatrain_version()} ({reason}). lorem_mta supports metatrain "
        f"{SUPPORTED_METATRAIN}.x: pip install '{SUPPORTED_REQUIREMENT}'. metatrain's own "
        "architectures are not affected."
    )


def _report(reason: str) -> None:
    """Print :py:func:`unsupported_message` to stderr, once per process."""
    if not _REPORTED:
        _REPORTED.append(reason)
        sys.stderr.write(unsupported_message(reason) + "\n")


def documentation_link(cls: str) -> str:
    """Where the options of a hyperparameter class are documented.

    :param cls: ``"ModelHypers"`` or ``"TrainerHypers"``
    :return: the path of ``lorem_mta/documentation.py`` and the class; metatrain appends
        ``.<option>`` to it
    """
    spec = importlib.util.find_spec("lorem_mta")
    if spec is None or not spec.submodule_search_locations:
        return f"lorem_mta.documentation.{cls}"
    folder = list(spec.submodule_search_locations)[0]
    return f"{folder}/documentation.py, class {cls}"


class _AliasLoader(importlib.abc.Loader):
    """Fill the alias module with the namespace of the real module."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):  # noqa: D102
        return None  # default module creation

    def exec_module(self, module):  # noqa: D102
        try:
            real = importlib.import_module(self.target)
        except (ImportError, AttributeError) as error:
            if supported_metatrain():
                raise  # a bug of lorem_mta, not a metatrain it does not know

            raise ImportError(
                unsupported_message(f"{type(error).__name__}: {error}")
            ) from error
        for name, value in vars(real).items():
            if name not in _MODULE_DUNDERS:
                setattr(module, name, value)


class _PatchingLoader(importlib.abc.Loader):
    """Run metatrain's real loader, then patch the module it created."""

    def __init__(self, loader, patch):
        self.loader = loader
        self.patch = patch

    def create_module(self, spec):  # noqa: D102
        return self.loader.create_module(spec)

    def exec_module(self, module):  # noqa: D102
        self.loader.exec_module(module)
        _patch_safely(module, self.patch)


class _Finder(importlib.abc.MetaPathFinder):
    """Resolve the alias modules and intercept ``metatrain.utils.architectures``."""

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        if fullname in _ALIASES:
            return importlib.machinery.ModuleSpec(
                fullname,
                _AliasLoader(_ALIASES[fullname]),
                is_package=not fullname.endswith(".documentation"),
            )
        if fullname in _PATCHES:
            for finder in sys.meta_path:
                if getattr(finder, _MARKER, False) or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _PatchingLoader(spec.loader, _PATCHES[fullname])
                    return spec
        return None


setattr(_Finder, _MARKER, True)


def _patch_safely(module, patch) -> None:
    """Apply ``patch`` to a metatrain module, or print one message if this metatrain differs.

    :param module: the imported metatrain module
    :param patch: one of the values of :py:data:`_PATCHES`
    """
    missing = [
        name
        for name in _NEEDED.get(module.__name__, ())
        if not callable(getattr(module, name, None))
    ]
    if missing:
        _report(f"{module.__name__} has no {' or '.join(missing)}")
        return
    try:
        patch(module)
    except Exception as error:  # noqa: BLE001 - any failure: one message, no traceback
        _report(f"{type(error).__name__}: {error}")


def _patch_architectures(module) -> None:
    """Make ``module.find_all_architectures`` also return ``experimental.lorem_mta``."""
    original = module.find_all_architectures
    if not getattr(original, _MARKER, False):

        @functools.wraps(original)
        def find_all_architectures():
            names = original()
            if ARCHITECTURE_NAME not in names:
                names.append(ARCHITECTURE_NAME)
            return names

        setattr(find_all_architectures, _MARKER, True)
        module.find_all_architectures = find_all_architectures

    original_preload = module.preload_documentation_module
    if not getattr(original_preload, _MARKER, False):

        @functools.wraps(original_preload)
        def preload_documentation_module(name):
            if name == ARCHITECTURE_NAME:
                # there is no documentation.py file under metatrain's package root
                return importlib.import_module(f"metatrain.{name}.documentation")
            return original_preload(name)

        setattr(preload_documentation_module, _MARKER, True)
        module.preload_documentation_module = preload_documentation_module

    # metatrain.utils.io did `from .architectures import find_all_architectures`
    io = sys.modules.get("metatrain.utils.io")
    if io is not None:
        io.find_all_architectures = module.find_all_architectures
    _patch_error_links()


def _patch_error_links() -> None:
    """Point hyperparameter error links of this architecture to its documentation."""
    pydantic = sys.modules.get(_PYDANTIC_MODULE)
    error_class = getattr(pydantic, "MetatrainArchitectureValidationError", None)
    original = getattr(error_class, "architecture_link", None)
    if original is None or getattr(original, _MARKER, False):
        return  # a metatrain without these links: nothing to correct

    @functools.wraps(original)
    def architecture_link(self, cls):
        if getattr(self, "_architecture", None) == ARCHITECTURE_NAME:
            return documentation_link(cls)
        return original(self, cls)

    setattr(architecture_link, _MARKER, True)
    error_class.architecture_link = architecture_link


def _patch_train(module) -> None:
    """Check the architecture of a restart or fine-tuning checkpoint in ``train_model``."""
    original = module.train_model
    if getattr(original, _MARKER, False):
        return

    @functools.wraps(original)
    def train_model(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        check_checkpoint_architecture(
            bound.arguments["options"], bound.arguments.get("restart_from")
        )
        return original(*args, **kwargs)

    setattr(train_model, _MARKER, True)
    module.train_model = train_model


def check_checkpoint_architecture(options, restart_from=None) -> None:
    """Refuse a restart or fine-tuning checkpoint of another architecture than LOREM's.

    Only applies when LOREM is on one of the two sides; checkpoints that can not be read
    are left to metatrain, which reports them.

    :param options: the training options (``architecture.name``, and
        ``architecture.training.finetune.read_from`` for fine-tuning)
    :param restart_from: the checkpoint of ``mtt train --restart``, if any
    :raises ValueError: naming the file, its architecture and that of the options
    """
    architecture = options["architecture"]
    name = architecture["name"]
    finetune = (architecture.get("training") or {}).get("finetune") or {}
    files = [("restart", restart_from), ("fine-tune", finetune.get("read_from"))]
    for action, path in files:
        if path is None or not os.path.isfile(str(path)):
            continue
        import torch

        try:
            checkpoint = torch.load(str(path), weights_only=False, map_location="cpu")
        except Exception:
            continue
        found = checkpoint.get("architecture_name") if isinstance(checkpoint, dict) else None
        if found is None or found == name or ARCHITECTURE_NAME not in (found, name):
            continue
        raise ValueError(
            f"'{path}' is a checkpoint of the '{found}' architecture, but these options "
            f"train '{name}': a checkpoint can only {action} a run of its own "
            f"architecture. Give a checkpoint written by a run of '{name}' (its model.ckpt, "
            f"or outputs/<date>/<time>/model_<epoch>.ckpt), or set `architecture: name: "
            f"{found}` (with that architecture's options) to continue the '{found}' run"
        )


#: what the patches of :py:data:`_PATCHES` use in every module
_NEEDED = {
    _ARCHITECTURES_MODULE: ("find_all_architectures", "preload_documentation_module"),
    "metatrain.utils.logging": ("setup_logging",),
    _TRAIN_MODULE: ("train_model",),
}

#: metatrain modules patched right after they are imported
_PATCHES = {
    _ARCHITECTURES_MODULE: lambda module: _patch_architectures(module),
    "metatrain.utils.logging": lambda module: _patch_logging(module),
    _TRAIN_MODULE: lambda module: _patch_train(module),
}


def quiet_warnings() -> None:
    """Hide deprecation warnings of other packages' code that every ``mtt`` run prints.

    Filtered by message and module only:

    * metatrain 2026.4's ``utils/omegaconf.py`` calls OmegaConf's deprecated
      ``register_new_resolver`` on import;
    * torch deprecates its TorchScript functions (``torch.jit.script``, ``save``,
      ``load``, ...), which metatensor, metatrain and metatomic call on import, export
      and load: metatomic models are TorchScript by design, the format every engine
      loads, so the warning is noise for users of these models.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"register_new_resolver\(\) is deprecated",
        category=UserWarning,
        module=r"metatrain\.utils\.omegaconf",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.\w+` is deprecated",
        category=DeprecationWarning,
        module=r"torch\.jit\.",
    )


def _patch_logging(module) -> None:
    """Re-install :py:func:`quiet_warnings` inside ``mtt``'s logging set-up.

    ``setup_logging`` turns deprecation warnings on
    (``warnings.simplefilter("default", DeprecationWarning)``), which takes precedence
    over the filters installed at start-up.
    """
    original = module.setup_logging
    if getattr(original, _MARKER, False):
        return

    @contextlib.contextmanager
    @functools.wraps(original)
    def setup_logging(*args, **kwargs):
        with original(*args, **kwargs):
            quiet_warnings()
            yield

    setattr(setup_logging, _MARKER, True)
    module.setup_logging = setup_logging


def register() -> None:
    """Install the import hook (idempotent; cheap, imports nothing heavy).

    Also installs :py:func:`quiet_warnings` (warnings that ``mtt`` prints before any
    ``lorem_mta`` code runs, and in ``mtt eval`` of an exported model, which never
    imports ``lorem_mta``).
    """
    quiet_warnings()
    if not any(getattr(finder, _MARKER, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            _patch_safely(module, patch)


def main():
    """``lorem-mtt``: metatrain's ``mtt`` command with ``lorem_mta`` registered.

    :return: what metatrain's entry point returns
    """
    register()
    from metatrain.__main__ import main as mtt_main

    return mtt_main()


if __name__ == "__main__":
    sys.exit(main())
