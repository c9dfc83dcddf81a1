"""Writing a user's file safely: the old file or the complete new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .data.readers import file_suffix
from .errors import MedSAFileError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(temporary_path)` on a temporary file beside `path` (same suffix), then renames it onto
    `path`: readers see the old file or the complete new one, and a failed write leaves nothing behind."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name.split('.')[0]}-", suffix=f".partial{file_suffix(path)}"
    )
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name only
        os.replace(temporary, path)
    except OSError as error:
        raise MedSAFileError(
            f"{path}: could not write the file ({error}); free some disk space or choose another output."
        ) from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
