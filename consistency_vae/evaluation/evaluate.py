"""``consistency-vae evaluate``: every metric and figure of a checkpoint, in one command.

    consistency-vae evaluate --ckpt_path runs/.../best-epoch24.ckpt --output results/eval
    consistency-vae evaluate --ckpt_path X.ckpt --output out --data.dataset fashion_mnist --iwae_k 100

From Python (the reproduction pipeline calls this for many checkpoints):

    from consistency_vae.evaluation.evaluate import evaluate_checkpoint
    metrics = evaluate_checkpoint("runs/.../last.ckpt", "results/eval", iwae_k=1000)

Writes ``DIR/metrics.json`` and ``DIR/{latent_drift,reconstructions,prior_samples}.png``. The data
config is the checkpoint's own (``datamodule_hyper_parameters``) unless overridden. All sampling
is seeded, so two runs on the same machine give the same numbers. The metrics are the registry's
(eval_metrics.py): every default one, plus those named by ``--metrics`` (``inference_gaps``).
A metric that the data does not allow (a probe on one class) is NaN, and metrics.json's
``skipped`` says why; the other metrics are kept.
"""

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from consistency_vae import threads
from consistency_vae.errors import CheckpointError, ConfigError, UserError
from consistency_vae.evaluation import eval_metrics
from consistency_vae.evaluation.evaluate_args import QUADRATURE_POINTS, check_quadrature_points, parser
from consistency_vae.user_files import check_output_folder

# The Lightning side (checkpointing, model, datamodule, callbacks) is imported inside the functions
# that use it, so that `evaluate --help` and `import` from reproduce stay light; none of them
# imports this module.
EVAL_BATCH = 1000  # images per forward: every metric sees the same batches
# key -> what it is, for the printed table and the README: the default metrics' keys, and alpha
METRIC_DOCS = {**{k: key.doc for name, info in eval_metrics.METRICS.items() if info.default
                  for k, key in info.keys.items()},
               "alpha": "final alpha (the buffer; moves in constrained mode)"}


@contextmanager
def timed(timings: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    """Adds the block's wall seconds to ``timings[stage]``. On CUDA the clock is read after a
    synchronize, so that a stage's kernels count to it, not to the next stage that waits on them."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _read_checkpoint(path: Path, allow_pickle: bool) -> dict:
    """The checkpoint dict, or a CheckpointError naming the path, what is wrong and the fix."""
    from consistency_vae import checkpointing

    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path} does not exist or is not a file: give a .ckpt "
                              "written by `consistency-vae fit` (runs/<name>/version_N/checkpoints/)")
    ckpt = checkpointing.load_checkpoint(path, allow_pickle)
    keys = ckpt["state_dict"].keys()
    if "alpha" not in keys or not any(k.startswith("encoder.") for k in keys) \
            or not any(k.startswith("decoder.") for k in keys):
        raise CheckpointError(f"{path} is a Lightning checkpoint of another model (weights "
                              f"{sorted(keys)[:4]}..., no encoder/decoder/alpha): give a ConsistencyVAE "
                              "checkpoint written by `consistency-vae fit`")
    return ckpt


def _load_model(path: Path, device: torch.device, allow_pickle: bool):
    from consistency_vae.model import ConsistencyVAE

    try:
        model = ConsistencyVAE.load_from_checkpoint(path, map_location=device,
                                                    weights_only=not allow_pickle)
    except Exception as err:  # hparams or weights that do not fit ConsistencyVAE
        reason = str(err).strip().splitlines()[0][:200]
        raise CheckpointError(f"cannot build ConsistencyVAE from {path} ({type(err).__name__}: "
                              f"{reason}): is it a checkpoint of this project's model?") from None
    return model.eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's own message lists every device type it knows
        raise ConfigError(f"--device {name}: not a device: use auto, cpu, cuda or cuda:N") from None


def _datamodule(ckpt_path: Path, allow_pickle: bool, **overrides):
    """The checkpoint's own data module (its ``datamodule_hyper_parameters``, built the way fit
    built it), with the non-None ``overrides`` (dataset, data_dir, subset, path) on top."""
    from consistency_vae.datamodule import MNISTDataModule

    dm = MNISTDataModule.load_from_checkpoint(
        ckpt_path, map_location="cpu", weights_only=not allow_pickle,
        **{k: v for k, v in overrides.items() if v is not None})
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate_checkpoint(ckpt_path: str | Path, output_dir: str | Path, *, dataset: str | None = None,
                        data_dir: str | None = None, subset: int | None = None, iwae_k: int = 1000,
                        iwae_images: int | None = None, iwae_batch: int = 25, device: str = "auto",
                        seed: int = 0, figures: bool = True, overwrite: bool = False,
                        allow_pickle: bool = False, progress: bool = True, path: str | None = None,
                        metrics: list[str] | tuple[str, ...] = (), mi_batch: int = 100,
                        gap_images: int = 100, quadrature_points: int = QUADRATURE_POINTS) -> dict:
    """Evaluate one checkpoint; write ``output_dir/metrics.json`` and PNGs; return the metrics.

    dataset, data_dir, subset, path: override the checkpoint's data config. iwae_images: IWAE on
    the first N test images only (quick runs); the other metrics always use the whole test set.
    iwae_batch: test images per IWAE step (25 keeps each block of logits in the CPU's cache).
    metrics: opt-in metrics of the registry to add (``inference_gaps``, on the first gap_images
    test images). mi_batch: B of the mutual information estimate (recorded with it).
    quadrature_points: n of the n x n grid of log p(x) by quadrature, 2-D latents only (quadrature.py;
    recorded in quadrature_settings): the time goes as n^2, the default is accurate down to a
    posterior std of 0.025.
    """
    from tqdm.auto import tqdm

    from consistency_vae import callbacks

    started = time.perf_counter()
    ckpt_path, out = Path(ckpt_path), Path(output_dir)
    if (out / "metrics.json").exists() and not overwrite:
        raise UserError(f"{out / 'metrics.json'} exists: pass --overwrite (overwrite=True) or "
                        "choose another --output")
    check_output_folder(out, "--output")
    counts = {"iwae_k": iwae_k, "iwae_images": iwae_images, "iwae_batch": iwae_batch,
              "data.subset": subset, "mi_batch": mi_batch, "gap_images": gap_images}
    if bad := {k: v for k, v in counts.items() if v is not None and v < 1}:
        raise ConfigError(f"{', '.join(f'--{k} {v}' for k, v in bad.items())}: each must be >= 1 "
                          "(a count of images or samples)")
    check_quadrature_points(quadrature_points)
    dev = _device(device)
    # seconds per stage, into metrics.json: "load", each metric's name, "figures". The model's
    # forward on a test batch is shared, and counts to the first metric that reads it (loss_terms).
    timings: dict[str, float] = {}
    with timed(timings, "load", dev):
        ckpt_epoch = _read_checkpoint(ckpt_path, allow_pickle).get("epoch")  # a clear error if not ours
        model = _load_model(ckpt_path, dev, allow_pickle)
        dm = _datamodule(ckpt_path, allow_pickle, dataset=dataset, data_dir=data_dir, subset=subset,
                         path=path)
    images, labels = dm.test_set.images, dm.test_set.labels  # (N, C, H, W), (N,) on the CPU
    n, dim = len(images), model.hparams.latent_dim
    n_iwae = min(iwae_images or n, n)
    settings = {"iwae_k": iwae_k, "iwae_images": n_iwae, "iwae_batch": iwae_batch, "seed": seed,
                "latent_dim": dim, "test_images": n, "mi_batch": mi_batch, "gap_images": gap_images,
                "quadrature_points": quadrature_points}
    chosen = [name for name, info in eval_metrics.METRICS.items() if info.default and info.applies(settings)]
    chosen += [m for m in metrics if m not in chosen]
    infos = [eval_metrics.get_metric(name) for name in chosen]
    built = [(info, info.build(settings).to(dev)) for info in infos]

    with callbacks.eval_mode(model):
        # One pass over each split that a metric reads, in batches of EVAL_BATCH; a test batch's
        # forward (model's own, with noise.eval_noise: trainer.test's numbers) is shared by all.
        for split, data in (("test", dm.test_set), ("train", dm.train_set)):
            users = [(info.name, metric) for info, metric in built if split in info.splits]
            with tqdm(total=len(data), desc=f"metrics on {split}", unit="img",
                      disable=not progress or not users) as bar:
                for i in range(0, len(data) if users else 0, EVAL_BATCH):
                    batch = eval_metrics.EvalBatch(model, data.images[i:i + EVAL_BATCH].to(dev),
                                                   data.labels[i:i + EVAL_BATCH], i, split, seed)
                    for name, metric in users:
                        with timed(timings, name, dev):
                            metric.update(batch)
                    bar.update(len(batch.x))
        results, skipped = {}, {}  # skipped: metric name -> why the data does not allow it
        for info, metric in built:
            with timed(timings, info.name, dev):
                values, reason = eval_metrics.compute_or_skip(info, metric)
            results.update(values)
            if reason is not None:
                skipped[info.name] = reason
        if skipped:
            print("consistency-vae evaluate: not computed, NaN in metrics.json: "
                  + "; ".join(f"{name} ({why})" for name, why in skipped.items()), file=sys.stderr)

        out.mkdir(parents=True, exist_ok=True)
        pngs = []
        if figures:
            name = dm.hparams.dataset
            title = f"{name}, alpha={float(model.alpha):.3g}, {ckpt_path.name}"
            for fname, make in (
                ("latent_drift", lambda: callbacks.latent_drift_figure(
                    model, images, labels, seed=seed, class_names=dm.class_names, title=title)),
                ("reconstructions", lambda: callbacks.reconstruction_figure(
                    model, images, labels, seed=seed, title=f"Reconstructions: {title}")),
                ("prior_samples", lambda: callbacks.prior_samples_figure(
                    model, seed=seed, title=f"Prior samples: {title}")),
            ):
                with timed(timings, "figures", dev):
                    fig = make()
                    fig.savefig(out / f"{fname}.png")
                    fig.clf()
                pngs.append(str(out / f"{fname}.png"))

    results.update({
        "alpha": float(model.alpha), "alpha_mode": model.hparams.alpha_mode, "latent_dim": dim,
        "dataset": dm.hparams.dataset, "ckpt_path": str(ckpt_path), "ckpt_epoch": ckpt_epoch,
        "metrics": chosen, "skipped": skipped, "iwae_k": iwae_k,
        "iwae_images": n_iwae, "test_images": n, "seed": seed, "device": str(dev),
        "cpu_threads": torch.get_num_threads(),
        "figures": pngs, "wall_seconds": round(time.perf_counter() - started, 1),
        "timings": {stage: round(seconds, 2) for stage, seconds in timings.items()},
    })
    tmp = out / "metrics.json.tmp"  # written whole, then renamed: never a half-written file
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "metrics.json")
    return results


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def format_table(results: dict) -> str:
    """The metrics as an aligned text table: key, value (± its standard error, where
    ``KEY_se`` is in the results: not a row of its own), meaning."""
    rows = []
    docs = {**{k: key.doc for k, key in eval_metrics.docs().items()}, **METRIC_DOCS}
    for key, doc in docs.items():
        if key not in results or isinstance(results[key], dict) \
                or (key.endswith("_se") and key.removesuffix("_se") in results):
            continue
        shown = _shown(results[key])
        if f"{key}_se" in results and shown != "nan":  # a skipped metric: no SE to show
            shown += f" ± {results[f'{key}_se']:.2g}"  # two digits: the SE's own precision
        rows.append((key, shown, doc))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    head = (f"{results['ckpt_path']}  ({results['dataset']}, latent_dim {results['latent_dim']}, "
            f"alpha_mode {results['alpha_mode']}, IWAE K={results['iwae_k']} on "
            f"{results['iwae_images']} of {results['test_images']} test images, "
            f"{results['wall_seconds']} s on {results['device']}, {results['cpu_threads']} CPU threads)")
    return "\n".join([head] + [f"  {k:<{width[0]}}  {v:>{width[1]}}  {d}" for k, v, d in rows])


def main(argv: list[str]) -> None:
    """consistency-vae evaluate: metrics.json, figures and a table for one checkpoint."""
    args = parser().parse_args(argv).as_dict()
    ckpt_path, output = args.pop("ckpt_path"), args.pop("output")
    threads.apply(args.pop("threads"))  # process-wide, so only here and not in evaluate_checkpoint
    args["figures"] = not args.pop("no_figures")
    # a UserError reaches cli.py, which prints it on one line
    results = evaluate_checkpoint(ckpt_path, output, **args.pop("data"), **args)
    print(format_table(results))
    print(f"wrote {Path(output) / 'metrics.json'}" + "".join(f", {f}" for f in results["figures"]))
