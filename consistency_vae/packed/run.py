"""A pack's process: N members' ``fit`` commands trained as one pack, each into its own run folder.

    python -m consistency_vae.packed.run SPEC.json

SPEC.json (written by the sweep runner, sweep/runner.py): ``{"members": [{"argv": [...], "run_info":
PATH}, ...]}``, where ``argv`` is the member's solo command after ``fit`` (the sweep file's command
and the grid point's flags, ``--ckpt_path last`` when it resumes) and ``run_info`` the JSON in which
the runner reads the member's run folder (``$CONSISTENCY_VAE_RUN_INFO`` of a solo run), plus here
``failed``: the member's error, when it failed alone. The exit code is 0 when every member finished.

Each member is built by its own command line as ``fit`` builds it (member_run.py), so every value
a user can set is read, checked and saved as in a solo run; the pack refuses members whose configs
differ in anything but the seed, alpha, alpha_mode and kl_target (and their run folders), and any
trainer setting or callback that it would not honour (packable.py), naming the value. A pack cut
off after epoch K (a SIGKILL) resumes from the members' last.ckpt files, which all hold epoch K:
the batches and noise of each epoch and step are keyed by seed, epoch and step (data.py), so it
ends where an unbroken pack would.
"""

import json
import math
import os
import sys
from pathlib import Path

from consistency_vae import atomic, checkpointing
from consistency_vae.errors import ConfigError, UserError
from consistency_vae.packed import checkpoint, packable
from consistency_vae.packed import restore as pack_restore
from consistency_vae.packed.fit import MemberResult, fit_pack
from consistency_vae.packed.member_run import PER_MEMBER_KEYS, MemberRun, member_cli, test_set_means
from consistency_vae.tracking import RUN_INFO_ENV, finish_wandb_run


def check_shared(runs: list[MemberRun]) -> None:
    """Every member's config is the first's, but for PER_MEMBER_KEYS (and the run folder names)."""
    def shared(run: MemberRun) -> dict:
        flat = run.config.items()  # jsonargparse's Namespace: its leaves, under dotted keys
        return {k: v for k, v in flat
                if not any(k == p or k.startswith(p + ".") for p in PER_MEMBER_KEYS)}

    first = shared(runs[0])
    for run in runs[1:]:
        for key, value in shared(run).items():
            if first.get(key, value) != value:
                raise ConfigError(f"pack: members differ in {key} ({first.get(key)!r} and {value!r}); a pack "
                                  f"shares everything but {', '.join(PER_MEMBER_KEYS[:4])}: train them in "
                                  "different packs (the sweep runner groups them so)")


def resumed_state(run: MemberRun) -> dict | None:
    """The member's checkpoint when it resumes (``--ckpt_path``, resolved as fit resolves it)."""
    path = run.ckpt_path
    return checkpointing.load_checkpoint(path) if path else None


def train(spec: dict) -> int:
    """Train the members of ``spec``; the number that failed. Members resume from the epoch after
    their last.ckpt's; those that start at the same epoch train together (a pack cut off between
    two members' checkpoints resumes as two packs: each member still ends as its solo run would)."""
    runs: list[MemberRun] = []
    for i, member in enumerate(spec["members"]):
        os.environ[RUN_INFO_ENV] = member["run_info"]  # read by the member's SaveConfigEverywhere
        runs.append(MemberRun(member_cli(member["argv"]), i))
        packable.check(runs[-1].trainer, runs[-1].config)
    check_shared(runs)
    states = [resumed_state(r) for r in runs]
    for run, member, state in zip(runs, spec["members"], states, strict=True):
        os.environ[RUN_INFO_ENV] = member["run_info"]
        run.start()
        if state is not None:
            run.resume(state)
    by_start: dict[int, list[int]] = {}
    for i, state in enumerate(states):
        by_start.setdefault(0 if state is None else int(state["epoch"]) + 1, []).append(i)
    failed = 0
    for first, members in sorted(by_start.items()):
        group = [runs[i] for i in members]
        for j, run in enumerate(group):
            run.index = j  # its row in this pack
        failed += _train(group, [states[i] for i in members], first, [spec["members"][i] for i in members])
    return failed


def _train(runs: list[MemberRun], states: list[dict | None], first: int, spec: list[dict]) -> int:
    dm = runs[0].datamodule
    dm.setup("fit")
    per_epoch = len(dm.train_set) // dm.hparams.batch_size
    val_batches = math.ceil(len(dm.val_set) / dm.hparams.eval_batch_size)

    def end_epoch(pack, epoch: int, results: list[MemberResult]) -> None:
        test = test_set_means(pack, runs)
        writer.flush()  # the last epoch's files are on disk before this epoch's are written
        for i, (run, result) in enumerate(zip(runs, results, strict=True)):
            if i in pack.failed:
                continue
            run.end_epoch(pack, epoch, result.epochs[-1], {k: float(v[i]) for k, v in (test or {}).items()},
                          global_step=(epoch + 1) * per_epoch, batches_per_epoch=per_epoch,
                          val_batches=val_batches, improved=result.best_epoch == epoch, writer=writer)

    def restore(pack, results: list[MemberResult]) -> None:
        pack_restore.restore_members(pack, results, states)

    device = runs[0].trainer.strategy.root_device
    with checkpoint.Writer() as writer:  # the checkpoints are written while the pack trains on
        results = fit_pack([r.member() for r in runs], dm, runs[0].max_epochs, device=device,
                           models=[r.model for r in runs], start_epoch=first,
                           restore=restore if first > 0 else None, on_epoch_end=end_epoch)
    failed = 0
    for run, result, member in zip(runs, results, spec, strict=True):
        if result.failed:
            failed += 1
            print(f"consistency-vae pack: {run.member().name()} failed: {result.failed}", file=sys.stderr)
        run.finish(result.last_weights, result.failed, first + len(result.epochs))
        info = json.loads(Path(member["run_info"]).read_text()) if Path(member["run_info"]).is_file() else {}
        atomic.write_text(member["run_info"], json.dumps(info | {"failed": result.failed}))
    return failed


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m consistency_vae.packed.run SPEC.json (the sweep runner writes it)")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        failed = train(spec)
    except UserError as err:  # refused before any work (packable.py): one line, as cli.py prints it
        raise SystemExit(f"consistency-vae pack: error: {err}") from None
    finally:
        finish_wandb_run()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
