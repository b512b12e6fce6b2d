import sys
from pathlib import Path

try:
    import _lorem_mta_mtt
except ImportError:  # source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import _lorem_mta_mtt

# make `experimental.lorem_mta` known to metatrain even when the interpreter skipped the
# lorem_mta_mtt.pth file (python -S) or the package is used from a source checkout
_lorem_mta_mtt.register()
