"""Weights & Biases set-up for the CLI: pick a mode that cannot hang, and upload the resolved config.

- ``ensure_wandb_mode``: with no credentials and no ``WANDB_MODE``, ``wandb.init`` would stop with
  "api_key not configured" (or wait for a prompt); with credentials but no route to the W&B server,
  it retries for ~90 s, then crashes the run. We switch to offline mode up front, with one line that
  says so and how to sync later.
- ``SaveConfigEverywhere``: LightningCLI's ``SaveConfigCallback`` (``config.yaml`` in the run
  folder, which is ``version_N`` of the first logger, the CSVLogger, so runs never collide), plus
  the same resolved config in every W&B run, plus, for a sweep runner that asks for it through
  ``$CONSISTENCY_VAE_RUN_INFO``, a small JSON naming the run folders.
"""

import json
import os
import socket
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from consistency_vae import atomic

RUN_INFO_ENV = "CONSISTENCY_VAE_RUN_INFO"  # path of the JSON a run writes for `consistency-vae sweep`
CREDENTIAL_ENVS = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")
REACH_TIMEOUT_S = 3.0  # to resolve and connect to the W&B server; no network costs this, once


def _has_wandb_credentials() -> bool:
    """True when W&B would find credentials: an env var, ~/.netrc (or $NETRC), or a settings file."""
    if any(os.environ.get(name) for name in CREDENTIAL_ENVS):
        return True
    import wandb

    # wandb's own non-interactive check (no prompt, no server round trip): netrc and settings files.
    found = bool(wandb.login(prompt=False, verify=False))
    if not found:
        wandb.teardown()  # drop the settings this check cached, so wandb.init sees our WANDB_MODE
    return found


def ensure_wandb_mode(environ: dict | None = None) -> str | None:
    """Set ``WANDB_MODE=offline`` when the user set no mode and W&B has no credentials.

    Returns the mode it set, or None when it left the environment alone.
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE"):
        return None
    if not _has_wandb_credentials():
        why = "no W&B credentials (WANDB_API_KEY, ~/.netrc)"
    elif not _reachable(url := _wandb_base_url()):
        why = f"the W&B server {url} cannot be reached within {REACH_TIMEOUT_S:g} s (no network?)"
    else:
        return None
    environ["WANDB_MODE"] = "offline"
    print(f"consistency-vae: {why}: logging to W&B offline; `wandb sync runs/wandb/offline-run-*` "
          "uploads later, WANDB_MODE=disabled turns W&B off", file=sys.stderr)
    return "offline"


def _wandb_base_url() -> str:
    """The server wandb.init would talk to (WANDB_BASE_URL, settings files, or its default)."""
    import wandb

    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    wandb.teardown()  # a wandb set up earlier in this process holds stale settings
    url = wandb.setup().settings.base_url
    wandb.teardown()  # drop the cached settings, so wandb.init sees the mode we may set
    return url


def _reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when a TCP connection to the URL's host, or to the proxy that wandb would go through,
    opens within ``timeout`` (DNS included: it runs in a thread, since name lookup itself ignores
    socket timeouts)."""
    address = _first_hop(url)
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def _first_hop(url: str) -> tuple[str, int]:
    """(host, port) that a request to ``url`` connects to first: the proxy that applies to it
    (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY, unless NO_PROXY names the host; upper or lower case,
    as wandb's HTTP client, requests, reads them), else the server itself. Behind a proxy the
    server's own address may not even resolve, yet wandb reaches it."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # 'host:port' means http
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class SaveConfigEverywhere(SaveConfigCallback):
    """``config.yaml`` in the run folder as usual, and the same resolved config in each W&B run.

    The config goes under the W&B key ``config`` (shown as ``config.model.alpha``...), apart from
    the flat ``model.alpha`` key that a W&B sweep sets, so the two never clash.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a broadcast: read it on every rank here, since Lightning calls
        # save_config on rank 0 only (reading it there hangs a DDP run).
        self._log_dir = None if self.already_saved else trainer.log_dir
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        wandb_runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for run in wandb_runs:
            run.config.update({"config": resolved}, allow_val_change=True)
        if info_path := os.environ.get(RUN_INFO_ENV):
            info = {"run_dir": self._log_dir,
                    "wandb_run_dir": str(Path(wandb_runs[0].dir).parent) if wandb_runs else None}
            atomic.write_text(info_path, json.dumps(info))  # the runner reads it at any moment


def finish_wandb_run() -> None:
    """Close the W&B run this command opened (call it in a ``finally``).

    WandbLogger leaves its run open, and a second command in the same process (a test, a
    notebook, an in-process reproduction) would silently log into it. A run ended by an exception
    is marked failed, as W&B marks a crashed process.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    err = sys.exc_info()[1]
    failed = err is not None and not (isinstance(err, SystemExit) and err.code in (0, None))
    wandb.finish(exit_code=1 if failed else 0)
