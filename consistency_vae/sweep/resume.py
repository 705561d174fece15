"""An earlier attempt of a grid point, as the sweep runner finds it before launching the next:
resume it (``--ckpt_path last``), or count it as finished because it got there without its runner
seeing it (cut off in its final test, or trained on after its runner was SIGKILLed)."""

from pathlib import Path

from consistency_vae.errors import UserError
from consistency_vae.run_folders import check_training_left
from consistency_vae.run_record import read_status


def resume_args(latest: dict | None) -> list[str]:
    """``--ckpt_path last`` when an earlier attempt of the same grid point was cut off (or failed)
    after writing a last.ckpt, and its folder is the one ``last`` finds (the newest of its name)."""
    if not latest or latest["status"] == "finished" or not latest.get("run_dir"):
        return []
    folder = Path(latest["run_dir"])
    newest = max((d for d in folder.parent.glob("version_*") if (d / "checkpoints/last.ckpt").is_file()),
                 key=lambda d: int(d.name.split("_")[1]) if d.name.split("_")[1].isdigit() else -1,
                 default=None)
    return ["--ckpt_path", "last"] if newest is not None and newest.resolve() == folder.resolve() else []


def finished_unrecorded(latest: dict | None, command: list[str]) -> str | None:
    """Why an earlier attempt that its runner did not see end counts as finished, or None: its
    last.ckpt holds every epoch ``command`` asks for. Its run folder's ``status.json`` tells how it
    got there: it finished (a SIGKILLed runner's run that trained on to its end), or it was cut off
    in its final test."""
    if not resume_args(latest) or not training_complete(folder := Path(latest["run_dir"]), command):
        return None
    if read_status(folder).get("status") == "finished":
        return "had finished after its runner was gone"
    return "had trained all its epochs (cut off in its final test)"


def training_complete(folder: Path, command: list[str]) -> bool:
    """Whether the run in ``folder`` has trained all the epochs ``command`` asks for (its last.ckpt
    says so), so that ``--ckpt_path last`` would be refused (run_folders.check_training_left)."""
    import yaml

    try:
        trainer = yaml.safe_load((folder / "config.yaml").read_text())["trainer"]
        for arg in command:  # the command's own settings win over the earlier attempt's config
            name, _, value = arg.partition("=")
            if name in ("--trainer.max_epochs", "--trainer.max_steps"):
                trainer[name.rsplit(".", 1)[1]] = int(value)
        check_training_left(folder / "checkpoints/last.ckpt", trainer)
    except UserError:
        return True
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):  # unreadable: the run will say why
        return False
    return False
