"""The grid points a sweep runner has still to train, each handed out once it is claimed for this
runner (``consistency_vae.sweep.claims``), alone or with the other points of its pack
(``sweep/packs.py``)."""

from pathlib import Path

from consistency_vae.sweep import claims, packs
from consistency_vae.sweep.store import SweepStore, run_key


class GridQueue:
    """The grid points still to train, each handed out once it is claimed for this runner."""

    def __init__(self, store: SweepStore, todo: list[tuple[int, dict]], extra_args: list[str]):
        self.store, self.todo, self.extra_args = store, list(todo), extra_args
        self.skipped = {"finished": 0, "failed here": 0, "claimed": 0}

    def next(self) -> tuple[int, dict, str, Path, dict | None] | None:
        """(index, params, key, claim file, latest earlier attempt) of the next point, or None."""
        while self.todo:
            index, params = self.todo.pop(0)
            key = run_key(params, self.extra_args)
            if (state := self.store.state(key)[0]) != "todo":
                self.skipped[state] += 1
                continue
            path = self.store.claim_path(key)
            if not claims.claim(path, {"key": key}):
                self.skipped["claimed"] += 1  # another runner trains it now
                continue
            state, latest = self.store.state(key)  # again, now that it is ours: it may have ended
            if state != "todo":
                claims.release(path)
                self.skipped[state] += 1
                continue
            return index, params, key, path, latest
        return None

    def next_in_pack(self, first: tuple, size: int) -> list[tuple]:
        """``first`` (from next()) and up to ``size - 1`` more claimed points of its pack: the points
        that differ from it only in per-member values (packs.group) and resume as it does. The
        others stay queued, in order."""
        from consistency_vae.sweep.resume import resume_args

        def resumes(picked: tuple) -> bool:
            return bool(resume_args(picked[4]))

        same = [t for t in self.todo if packs.group(t[1]) == packs.group(first[1])]
        others = [t for t in self.todo if packs.group(t[1]) != packs.group(first[1])]
        picked, passed, self.todo = [first], [], same
        while len(picked) < size and (found := self.next()) is not None:
            if resumes(found) == resumes(first):
                picked.append(found)
            else:  # it resumes where first starts fresh, or the reverse: another pack, later
                claims.release(found[3])
                passed.append((found[0], found[1]))
        self.todo = sorted(self.todo + others + passed, key=lambda t: t[0])
        return picked
