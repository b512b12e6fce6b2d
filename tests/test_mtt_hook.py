"""The ``mtt`` registration hook: unknown metatrain versions and hyperparameter links.

A metatrain whose internals differ from the release the hook is written for is simulated
by a fake ``metatrain`` package (with its own ``dist-info`` version) put first on
``PYTHONPATH`` of a fresh interpreter, which runs the ``lorem_mta_mtt.pth`` hook at
start-up like any ``mtt`` command.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from metatrain.utils.pydantic import MetatrainValidationError, validate_architecture_options

import _lorem_mta_mtt
from lorem_mta.documentation import ModelHypers, TrainerHypers

ROOT = Path(__file__).resolve().parents[1]
FAKE_VERSION = "2099.1"


def _fake_metatrain(directory: Path, architectures_source: str) -> Path:
    """A ``metatrain`` package whose ``utils.architectures`` holds ``architectures_source``."""
    package = directory / "metatrain"
    (package / "utils").mkdir(parents=True)
    (package / "experimental").mkdir()
    for folder in [package, package / "utils", package / "experimental"]:
        (folder / "__init__.py").write_text("")
    (package / "utils" / "architectures.py").write_text(architectures_source)
    info = directory / f"metatrain-{FAKE_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: metatrain\nVersion: {FAKE_VERSION}\n"
    )
    return directory


def _run(code: str, fake: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that finds the fake metatrain first."""
    environment = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unknown_metatrain_gives_one_message(tmp_path):
    """Missing internals: one readable message, no traceback, metatrain still imports."""
    fake = _fake_metatrain(tmp_path, "def list_architectures():\n    return []\n")
    code = (
        "import _lorem_mta_mtt\n"
        "import metatrain.utils.architectures as module\n"
        "_lorem_mta_mtt.register()\n"  # a second registration must not repeat it
        "print('imported', module.list_architectures())\n"
    )
    result = _run(code, fake)
    assert result.returncode == 0, result.stderr
    assert "imported []" in result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.count("lorem_mta: cannot register") == 1, result.stderr
    message = result.stderr.strip()
    assert f"metatrain {FAKE_VERSION}" in message
    assert "find_all_architectures" in message
    assert _lorem_mta_mtt.SUPPORTED_REQUIREMENT in message


def test_unknown_metatrain_architecture_import_names_versions(tmp_path):
    """Loading the architecture from a metatrain that lacks what it needs: a clear error."""
    source = (
        "def find_all_architectures():\n    return []\n\n"
        "def preload_documentation_module(name):\n    return None\n"
    )
    fake = _fake_metatrain(tmp_path, source)
    code = (
        "import metatrain.utils.architectures as module\n"
        "print(module.find_all_architectures())\n"
        "try:\n"
        "    import metatrain.experimental.lorem_mta\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n"
    )
    result = _run(code, fake)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['experimental.lorem_mta']"  # the patch itself worked
    assert lines[1].startswith("ImportError: lorem_mta: cannot register"), result.stdout
    assert f"metatrain {FAKE_VERSION}" in lines[1]
    assert _lorem_mta_mtt.SUPPORTED_REQUIREMENT in lines[1]


def test_supported_metatrain_is_silent():
    """The installed (supported) metatrain: no message at all."""
    assert _lorem_mta_mtt.supported_metatrain()
    result = subprocess.run(
        [sys.executable, "-c", "import metatrain.utils.architectures, metatrain.utils.io"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "lorem_mta" not in result.stderr


def _error(options: dict, architecture: str = _lorem_mta_mtt.ARCHITECTURE_NAME) -> str:
    with pytest.raises(MetatrainValidationError) as info:
        validate_architecture_options(
            {"name": architecture, "training": {}, **options},
            ModelHypers,
            TrainerHypers,
            architecture_name=architecture,
        )
    return str(info.value)


@pytest.mark.parametrize(
    "options, cls, option",
    [
        ({"model": {"cutoff": "five"}}, "ModelHypers", "cutoff"),
        ({"model": {}, "training": {"num_epochs": "many"}}, "TrainerHypers", "num_epochs"),
        ({"model": {"cutof": 5.0}}, "ModelHypers", None),
    ],
)
def test_hyperparameter_error_links_exist(options, cls, option):
    """Error links name documentation.py and a class (and option) that exist in it."""
    message = _error(options)
    assert "docs.metatensor.org" not in message
    path = Path(_lorem_mta_mtt.documentation_link(cls).split(",")[0])
    assert path.is_file() and path.name == "documentation.py"
    target = f"{path}, class {cls}" + (f".{option}" if option else "")
    assert target in message, message
    source = path.read_text()
    assert f"class {cls}(TypedDict)" in source
    if option is not None:
        hypers = {"ModelHypers": ModelHypers, "TrainerHypers": TrainerHypers}[cls]
        assert option in hypers.__annotations__
    # the documentation renders every option of the class on the hyperparameters page
    assert f".. lorem-hypers:: {cls}" in (ROOT / "docs" / "hyperparameters.rst").read_text()


def test_other_architectures_keep_metatrain_links():
    """The link correction only applies to experimental.lorem_mta."""
    message = _error({"model": {"cutoff": "five"}}, architecture="soap_bpnn")
    assert "docs.metatensor.org/metatrain" in message
