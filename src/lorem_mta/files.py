"""Safe file writes: complete files or nothing."""

import os
import tempfile
from typing import Callable


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(temporary)`` on a temporary file, then rename it.

    The temporary file lies in the folder of ``path``, so the final rename is atomic: an
    existing file at ``path`` is only ever replaced by a complete one. If ``write``
    fails (an exception, a full disk, an interruption) the temporary file is removed and
    ``path`` is left as it was.

    :param path: the file to write
    :param write: writes the whole content to the path it is given
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    os.close(fd)
    try:
        write(temporary)
        # mkstemp creates the file readable by its owner only; use the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
