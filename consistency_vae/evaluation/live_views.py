"""Views of the metrics registry (eval_metrics.py) made at each use, for module-level constants
of the reports: ``LiveTuple(eval_metrics.report_rows)`` also holds a metric registered after the
report module was imported (a user's ``--metrics my_module.NAME``)."""

from collections.abc import Callable, Mapping, Sequence


class LiveTuple(Sequence):
    """A tuple made from the registry at each use: a metric registered later is in it too."""

    def __init__(self, make: Callable[[], tuple]):
        self._make = make

    def __getitem__(self, index):
        return self._make()[index]

    def __len__(self) -> int:
        return len(self._make())


class LiveDict(Mapping):
    """A dict made from the registry at each use (see LiveTuple)."""

    def __init__(self, make: Callable[[], dict]):
        self._make = make

    def __getitem__(self, key):
        return self._make()[key]

    def __iter__(self):
        return iter(self._make())

    def __len__(self) -> int:
        return len(self._make())
