"""Files that another process reads while this one may write them (sweep records, claims, a run's
run-info and status.json): written whole to a temporary name in the same folder, then moved into
place with ``os.replace``, which is atomic on POSIX and Windows. A reader sees the old file or the
new one, never half of one; a writer that dies leaves at most a ``.NAME.PID.tmp`` behind it.

Readers still treat a missing or unparsable file as "not yet written": a file from an older
version of this project, or one copied in by hand, may not have been written this way.
"""

import os
from pathlib import Path


def write_text(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` in one step. No fsync: the rename is what makes it atomic for
    other processes; surviving a power cut is the checkpoints' concern (checkpointing.py)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: a rename, never a copy
    try:
        tmp.write_text(text, newline="")  # as given: no "\n" -> "\r\n" on Windows (csv writes its own)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
