"""A checkpoint's plain entries (loop counters, epoch, step), read without torch.

``torch.save`` writes a zip whose ``<name>/data.pkl`` is the pickle of the saved dict; its tensors
are persistent ids pointing at other members of the zip. Unpickled with every class but
``OrderedDict`` replaced by an inert stand-in, it gives the dict's ints, strings and nested dicts
without importing torch (seconds, which ``consistency-vae runs`` should not pay) or reading a
tensor's bytes. Nothing in the file is called, so this is safe on any file, as torch's
``weights_only`` load is. A file that is not such a zip raises ``ValueError``; callers fall back.
"""

import collections
import pickle
import zipfile
from pathlib import Path


class Opaque(dict):
    """What any object other than dicts, lists, tuples, strings and numbers reads as (tensors,
    storages, the model's classes): it takes every argument and every state, and holds nothing."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass

    def append(self, item) -> None:  # a list subclass's items (pickle's APPENDS)
        pass

    def extend(self, items) -> None:
        pass


class _Reader(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):  # state dicts: keep their entries
            return collections.OrderedDict
        return Opaque

    def persistent_load(self, pid):  # a tensor's storage, in another member of the zip
        return Opaque()


def read(path: str | Path) -> dict:
    """The saved dict of a ``torch.save`` file, tensors and objects as ``Opaque``; ValueError if
    the file is not a zip holding one pickle (an old-format or a truncated file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(names) != 1:
                raise ValueError(f"{path}: no data.pkl in the zip, not a torch.save file")
            with archive.open(names[0]) as f:
                saved = _Reader(f).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path}: not readable as a torch.save zip ({err})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: holds a {type(saved).__name__}, not a checkpoint's dict")
    return saved
