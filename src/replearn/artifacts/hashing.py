"""Content hashes of files: what keys an inbox image, names a model in the cluster registry and keys caches."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (models and inboxes can be large).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as handle:
    ...     sha256_file(Path(handle.name))[:12]
    'e3b0c44298fc'
    """
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
