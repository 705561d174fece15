"""Reading the YAML and JSON files that the project commands are pointed at (a sweep file, a run
folder's config.yaml, evaluate's metrics.json): a missing, unreadable or malformed file is a
DataError naming the file and the fix, so the command prints one line instead of a traceback."""

import json
from pathlib import Path

import yaml

from consistency_vae.errors import DataError, UserError


def _text(path: Path, fix: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:  # a folder, no permission, a binary file
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}): {fix}") from None


def read_yaml(path: str | Path, fix: str) -> dict:
    """The mapping (``key: value`` lines) in the YAML file ``path``; an empty file is ``{}``.
    ``fix`` ends the message: what the user should do about a bad file."""
    path = Path(path)
    try:
        content = yaml.safe_load(_text(path, fix))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise DataError(f"{path} is not valid YAML{at} ({getattr(err, 'problem', None) or err}): "
                        f"{fix}") from None
    if content is None:  # an empty file: no keys
        return {}
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a YAML {type(content).__name__}, not a mapping of keys to "
                        f"values: {fix}")
    return content


def read_json(path: str | Path, fix: str):
    """The parsed JSON of ``path``; a malformed file (a partial write) names the file and ``fix``."""
    path = Path(path)
    try:
        return json.loads(_text(path, fix))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}): {fix}") from None


def check_output_folder(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output folder that is a file (it is made where missing)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: give a folder (made if missing)")
