"""Safe file writes: complete files or nothing.

Every output of lorem_mta (exported models, converted lorem-jax models, training
checkpoints) goes through :py:func:`write_atomically` or :py:func:`write_bytes_atomically`:

* the content is written to a temporary file in the folder of the output, flushed to
  disk, and renamed onto the output, so an existing file is only ever replaced by a
  complete one; on any failure (a full disk, an interruption) the temporary file is
  removed and the existing file is left as it was, and an ``OSError`` names the file and
  the cause;
* an output that exists and is not a regular file (a folder, a device node such as
  ``/dev/full``, a FIFO, a socket) is refused before anything is written: the rename
  would replace it;
* an output that is a symbolic link is written through: the link stays a link and its
  target is replaced atomically (as ``cp`` or an editor would do). The folder of the
  target must exist.
"""

import errno
import os
import stat
import tempfile
from typing import Callable

_KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
}


def output_path(path: str) -> str:
    """The regular file that a write to ``path`` replaces.

    :param path: output path given by the user
    :return: ``path`` itself, or the final target if ``path`` is a symbolic link
    :raises OSError: if the file that would be replaced is not a regular file, or if
        its folder does not exist
    """
    target = os.path.realpath(path) if os.path.islink(path) else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(folder):
            raise _naming(
                FileNotFoundError(
                    errno.ENOENT, f"No such file or directory: no folder '{folder}'"
                ),
                path,
            ) from None
        return target
    if stat.S_ISREG(mode):
        return target
    kind = next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")
    via = f" (the target of the link '{path}')" if target != path else ""
    hint = f": give a file name inside it, e.g. '{os.path.join(path, 'model.pt')}'"
    raise OSError(
        errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
        f"refusing to write to '{target}'{via}: it is {kind}, not a regular file"
        + (hint if stat.S_ISDIR(mode) else ""),
    )


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(temporary)`` on a temporary file, then rename it.

    The temporary file lies in the folder of ``path`` (of its target for a symbolic
    link), so the final rename is atomic: an existing file at ``path`` is only ever
    replaced by a complete one. If ``write`` fails (an exception, a full disk, an
    interruption) the temporary file is removed and ``path`` is left as it was.

    ``write`` must raise a Python exception on errors; TorchScript's ``save`` aborts the
    process on a write error instead, see :py:func:`write_bytes_atomically`.

    :param path: the file to write
    :param write: writes the whole content to the path it is given
    :raises OSError: if ``path`` is not a regular file (see :py:func:`output_path`), or
        if writing fails; the message names ``path`` and the cause
    """
    target = output_path(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, temporary = tempfile.mkstemp(
            prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise _naming(e, path) from e
    os.close(fd)
    try:
        write(temporary)
        # the content is on disk before the rename makes it visible
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; use the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException as e:
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` with :py:func:`write_atomically`.

    The bytes are written by Python, so a full disk raises an ``OSError`` (for
    TorchScript files: save them to memory first, see
    :py:func:`lorem_mta.model.export`).

    :param path: the file to write
    :param data: its whole content
    """

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            file.write(data)

    write_atomically(path, write)


def _naming(error: OSError, path: str) -> OSError:
    """``error`` with a message naming ``path`` and stating that it is unchanged."""
    cause = error.strerror or str(error)
    message = f"could not write '{path}': {cause} (an existing file there is left unchanged)"
    # OSError(errno, message) is the subclass of that errno (FileNotFoundError, ...)
    return OSError(message) if error.errno is None else OSError(error.errno, message)


def write_saved_atomically(path: str, save: Callable[[str], None]) -> None:
    """Write ``path`` with a ``save(file_name)`` function that may abort on write errors.

    TorchScript's ``save`` (and so metatomic's ``AtomisticModel.save``) terminates the
    whole process when a write fails (``std::ios_failure``, exit code 134), leaving a
    temporary file behind. On Linux the file is therefore first saved into an anonymous
    in-memory file (``memfd_create``), where writes do not fail for a full disk, and its
    bytes are then written by :py:func:`write_bytes_atomically`, which raises an
    ``OSError``. Elsewhere ``save`` writes the temporary file itself
    (:py:func:`write_atomically`).

    :param path: the file to write
    :param save: writes the whole content to the file name it is given
    """
    output_path(path)  # refuse a folder or a device before the work of saving
    if not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")):
        write_atomically(path, save)
        return
    fd = os.memfd_create("lorem-mta-output", getattr(os, "MFD_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as memory:
        save(f"/proc/self/fd/{fd}")
        memory.seek(0)
        data = memory.read()
    write_bytes_atomically(path, data)
