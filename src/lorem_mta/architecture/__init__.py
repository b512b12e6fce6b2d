"""LOREM as a metatrain architecture, registered as ``experimental.lorem_mta``.

metatrain imports this package as ``metatrain.experimental.lorem_mta`` through the import
hook of the top-level ``_lorem_mta_mtt`` module (see its docstring); the
hyperparameters live in :py:mod:`lorem_mta.documentation`.
"""

from .reporting import quiet_third_party

# before the imports below: they import metatensor and metatrain modules that warn
quiet_third_party()

from .model import LoremMta  # noqa: E402
from .trainer import Trainer  # noqa: E402

__model__ = LoremMta
__trainer__ = Trainer

__authors__ = [("lorem_mta developers", "")]

__maintainers__ = [("lorem_mta developers", "")]

__all__ = ["LoremMta", "Trainer"]
