"""The one atomic writer: files appear whole or not at all, mode from the umask.

* `write_files_atomically({path: bytes})`: several files, all or none (each
  written to a temporary file in its destination folder, then all renamed
  into place; on failure the temporaries and the destinations already
  renamed are removed).
* `write_atomic(path, data)`: one file (str is UTF-8 encoded).

Files get the mode a plain `open(path, "w")` would give them (0o666 minus
the umask, e.g. 0o644 under umask 022), not `tempfile.mkstemp`'s owner-only
0o600. Destination folders are created when missing.
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Union


def default_file_mode() -> int:
  """Permissions of a newly created file under the current umask."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def write_files_atomically(contents: Mapping[str, bytes]) -> None:
  """Writes several files so that either all appear or none does.

  Args:
    contents: {destination path: bytes}.

  Raises:
    OSError: when a write or rename fails (nothing is left behind).
  """
  mode = default_file_mode()
  temporaries = {}
  renamed = []
  try:
    for path, data in contents.items():
      folder = os.path.dirname(os.path.abspath(path))
      os.makedirs(folder, exist_ok=True)
      handle, temporary = tempfile.mkstemp(
          prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
      temporaries[path] = temporary
      with os.fdopen(handle, "wb") as stream:
        stream.write(data)
      os.chmod(temporary, mode)  # mkstemp makes owner-only files.
    for path, temporary in temporaries.items():
      os.replace(temporary, path)
      renamed.append(path)
  except BaseException:
    for path, temporary in temporaries.items():
      try:
        os.remove(path if path in renamed else temporary)
      except OSError:
        pass
    raise


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes one file atomically (`write_files_atomically`); str -> UTF-8."""
  write_files_atomically({path: data.encode() if isinstance(data, str) else data})
