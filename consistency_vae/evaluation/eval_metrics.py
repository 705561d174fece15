"""The evaluation metrics registry: what ``consistency-vae evaluate`` computes and reports.

A metric is one ``torchmetrics.Metric`` whose ``update`` takes an ``EvalBatch`` (the model, the
images, their labels and the model's seeded forward on them, computed once and shared) and whose
``compute`` returns ``{key: number}``, plus one ``register_metric`` line naming the keys it
writes into metrics.json, what each is, and which way is better (for reports). ``evaluate``
runs every default metric, and the opt-in ones (``--metrics NAME``; a dotted name,
``my_module.NAME``, imports ``my_module`` first). docs/extending.md has the recipe. A number
estimated from the test images comes with ``KEY_se``, its standard error over them
(``standard_errors.py``), registered with ``se_key``. A metric that the data does not allow
raises ``MetricUnavailable`` (errors.py) in ``compute``: its keys are NaN, with the reason, and
the other metrics are kept (``compute_or_skip``).
"""

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from consistency_vae import noise
from consistency_vae.errors import ConfigError, MetricUnavailable
from consistency_vae.evaluation import inference_gaps, metrics, quadrature, representation
from consistency_vae.evaluation.representation import MeansProbe
from consistency_vae.evaluation.standard_errors import (
    active_units_bootstrap,
    standard_error,
)


@dataclass
class EvalBatch:
    """Images ``start .. start + len(x)`` of one split ("train" or "test"), as every metric sees them."""

    model: torch.nn.Module
    x: Tensor  # (B, C, H, W) in [0, 1], on the model's device
    labels: Tensor  # (B,)
    start: int  # index of x[0] in its split: the eval noise is one row per image
    split: str
    seed: int
    _out: dict | None = field(default=None, repr=False)

    @property
    def out(self) -> dict[str, Tensor]:
        """The model's forward with ``noise.eval_noise`` rows: trainer.test's numbers. Computed once."""
        if self._out is None:
            dim = self.model.hparams.latent_dim
            self._out = self.model(self.x, noise.eval_noise(self.start, len(self.x), dim, self.seed))
        return self._out

    def encode(self) -> tuple[Tensor, Tensor]:
        """(mu, logvar), (B, D) each; the encoder alone where no metric needs the forward."""
        return (self._out["mu"], self._out["logvar"]) if self._out else self.model.encode(self.x)


@dataclass(frozen=True)
class Key:
    doc: str  # what the number is, with its unit
    better: str | None = None  # "higher", "lower" or None (a count, a setting)
    label: str | None = None  # a column of the reproduction summary; with ``better``, of the sweep report too


@dataclass(frozen=True)
class MetricInfo:
    name: str
    build: Callable[[dict], Metric]  # evaluate's settings (iwae_k, seed, test_images...) -> metric
    keys: dict[str, Key]  # metrics.json keys that ``compute`` returns
    splits: tuple[str, ...] = ("test",)  # the splits its ``update`` sees
    default: bool = True  # False: only with ``evaluate --metrics NAME`` (expensive)
    applies: Callable[[dict], bool] = lambda settings: True  # e.g. quadrature: 2-D latents only


METRICS: dict[str, MetricInfo] = {}


def register_metric(info: MetricInfo) -> MetricInfo:
    METRICS[info.name] = info
    return info


def get_metric(name: str) -> MetricInfo:
    if name not in METRICS and "." in name:
        module, _, short = name.rpartition(".")
        try:
            importlib.import_module(module)  # registers its metrics
        except ModuleNotFoundError as err:
            if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
                raise  # the module exists but imports a missing one: its own bug, shown whole
            raise ConfigError(f"--metrics {name}: no module {err.name!r} to import: give a module on "
                              "the Python path (run from its folder, or set PYTHONPATH) whose import "
                              "registers the metric (docs/extending.md)") from None
        name = short
    if name not in METRICS:
        raise ConfigError(f"--metrics: unknown metric {name!r}: choose from {list(METRICS)}, or a "
                          "dotted my_module.NAME whose module registers NAME (docs/extending.md)")
    return METRICS[name]


def compute_or_skip(info: MetricInfo, metric: Metric) -> tuple[dict, str | None]:
    """(``metric.compute()``, None), or, where it raises MetricUnavailable, (NaN for each of its
    registered keys, the reason)."""
    try:
        return metric.compute(), None
    except MetricUnavailable as err:
        return {key: math.nan for key in info.keys}, str(err)


def se_key(of: str, how: str = "sqrt(sample variance / n) of the per-image values") -> Key:
    """The Key of ``KEY_se``: no label and no ``better``, so reports show it beside KEY, not as a
    column of its own (``evaluate``'s table prints "value ± se" on KEY's row)."""
    return Key(f"standard error over test images of {of}: {how}")


def docs() -> dict[str, Key]:
    """Every registered key, in registration order."""
    return {k: v for info in METRICS.values() for k, v in info.keys.items()}


def summary_labels() -> dict[str, str]:
    """key -> label of the keys the reproduction summary reports (reproduction/summary.py)."""
    return {k: key.label for k, key in docs().items() if key.label}


def report_rows() -> tuple[tuple[str, str, str], ...]:
    """(key, label, better) of the keys the sweep report compares (sweep/report.py)."""
    return tuple((k, key.label, key.better) for k, key in docs().items() if key.label and key.better)


# --- the built-in metrics ---------------------------------------------------------------------
class SplitLossTerms(metrics.LossTerms):
    def update(self, batch: EvalBatch) -> None:
        super().update(batch.out)

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in super().compute().items()}


class IWAE(metrics.IWAELogLikelihood):
    """IWAE bound on the first ``iwae_images`` test images, and its gap to their ELBO: the mean of
    the per-image differences, so its SE is that of the paired differences."""

    def __init__(self, settings: dict):
        super().__init__(settings["iwae_k"])
        self.images, self.chunk = settings["iwae_images"], settings["iwae_batch"]
        self.generator = torch.Generator().manual_seed(settings["seed"] + 2)  # not the terms' eps
        for state in ("gap_sum", "gap_sq"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:
        n = min(len(batch.x), self.images - batch.start)
        for i in range(0, n, self.chunk):
            j = min(i + self.chunk, n)
            bound = metrics.iwae_log_likelihood(batch.model, batch.x[i:j], self.k, self.generator,
                                                self.max_elements)  # (b,)
            self._add(bound)
            gap = bound.detach().double() - batch.out["elbo"][i:j].detach().double()  # (b,)
            self.gap_sum += gap.sum()
            self.gap_sq += gap.pow(2).sum()

    def compute(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in super().compute().items()},
                "iwae_gap": float(self.gap_sum / self.count),
                "iwae_gap_se": float(standard_error(self.gap_sum, self.gap_sq, self.count))}


class SplitActiveUnits(metrics.ActiveUnits):
    """The count, and its SE by a seeded bootstrap over the test images: it keeps the mu rows,
    (N, D), gathered across processes (in rank order, so other draws than one process's)."""

    def __init__(self, settings: dict):
        super().__init__(settings["latent_dim"])
        self.seed = settings["seed"] + 5
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, batch: EvalBatch) -> None:
        super().update(batch.out["mu"])
        self.rows.append(batch.out["mu"].detach().cpu().double())

    def compute(self) -> dict[str, float]:
        counts = active_units_bootstrap(dim_zero_cat(self.rows), self.threshold,
                                        torch.Generator().manual_seed(self.seed))  # (R,)
        return {"active_units": int(super().compute()), "active_units_se": float(counts.double().std())}


class BatchedMutualInformation(representation.MutualInformation):
    """He et al.'s I(x; z) on the test images in batches of B = min(mi_batch, test images); a last
    partial batch is left out (the estimate depends on B, recorded as mutual_information_batch)."""

    def __init__(self, settings: dict):
        super().__init__()
        self.size = min(settings["mi_batch"], settings["test_images"])
        self.generator = torch.Generator().manual_seed(settings["seed"] + 3)
        self.pending: list[Tensor] = []  # (b, 2D) rows not yet in a full batch

    def update(self, batch: EvalBatch) -> None:
        mu, logvar = batch.encode()
        rows = torch.cat([*self.pending, torch.cat([mu, logvar], 1).detach().cpu().double()])
        full = len(rows) // self.size * self.size
        for i in range(0, full, self.size):
            super().update(*rows[i:i + self.size].chunk(2, dim=1), self.generator)
        self.pending = [rows[full:]]

    def compute(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in super().compute().items()}, "mutual_information_batch": self.size}


ONE_Z = "sqrt(sample variance / n) of the per-image values, one z each: z's noise is in it too"
BINOMIAL = "sqrt(p (1 - p) / n), the classifier fit on the training images held fixed"
register_metric(MetricInfo("loss_terms", lambda s: SplitLossTerms(), {
    "kl_consistency": Key("KL(q(z'|x') || q(z|x)), test mean, nats", "lower",
                          "test KL(z'||z) [nats] (lower: more consistent)"),
    "elbo": Key("ELBO (1 sample of z, analytic KL), test mean, nats", "higher", "test ELBO [nats]"),
    "recon": Key("-log p(x|z) (Bernoulli), test mean, nats", "lower"),
    "kl": Key("KL(q(z|x) || N(0, I)), test mean, nats"),
    **{f"{t}_se": se_key(t, ONE_Z) for t in ("kl_consistency", "elbo", "recon")},
    "kl_se": se_key("kl")}))
register_metric(MetricInfo("iwae", IWAE, {
    "iwae_ll": Key("IWAE bound on log p(x), K samples, nats", "higher", "test IWAE log-lik. [nats]"),
    "iwae_gap": Key("iwae_ll - ELBO of the same images, nats", label="IWAE - ELBO gap [nats]"),
    "iwae_ll_se": se_key("iwae_ll"),
    "iwae_gap_se": se_key("iwae_gap", "of the paired per-image differences iwae - elbo")}))
register_metric(MetricInfo("active_units", SplitActiveUnits, {
    "active_units": Key("dims with Var_x[mu(x)] > 0.01", label="active units"),
    "active_units_se": se_key("active_units", "std of the count over 200 seeded bootstrap "
                                              "resamples of the test images")}))
register_metric(MetricInfo("probe_accuracy", lambda s: MeansProbe(
    "probe_accuracy", metrics.linear_probe_accuracy), {
    "probe_accuracy": Key("logistic regression on mu(x): train -> test", "higher",
                          "linear probe accuracy"),
    "probe_accuracy_se": se_key("probe_accuracy", BINOMIAL)}, ("train", "test")))
register_metric(MetricInfo("knn_accuracy", lambda s: MeansProbe(
    "knn_accuracy", representation.knn_accuracy, representation.KNN_NEIGHBOURS), {
    "knn_accuracy": Key("5-nearest-neighbour vote on mu(x): train -> test", "higher",
                        "5-NN accuracy on mu(x)"),
    "knn_accuracy_se": se_key("knn_accuracy", BINOMIAL)}, ("train", "test")))
register_metric(MetricInfo("mutual_information", BatchedMutualInformation, {
    "mutual_information": Key("I(x; z) of q(x, z), He et al. 2019, nats (<= log B)", "higher",
                              "I(x; z) [nats]"),
    "mutual_information_batch": Key("B, the images per estimate of q(z)"),
    "mutual_information_se": se_key("mutual_information", "sample std of the per-batch "
                                                          "estimates / sqrt(batches)")}))
register_metric(MetricInfo("log_likelihood", quadrature.QuadratureLogLikelihood, {
    "log_likelihood": Key("log p(x) by quadrature over the 2-D latent, test mean, nats", "higher",
                          "test log p(x) (quadrature) [nats]"),
    "log_likelihood_gap": Key("log p(x) - ELBO of the same images, nats", label="log p(x) - ELBO [nats]"),
    "log_likelihood_se": se_key("log_likelihood"),
    "log_likelihood_gap_se": se_key("log_likelihood_gap", "of the paired per-image differences")},
    applies=lambda settings: settings["latent_dim"] == 2))  # its grid settings: quadrature_settings
register_metric(MetricInfo("inference_gaps", inference_gaps.InferenceGaps, {
    "amortization_gap": Key("ELBO* - ELBO of the encoder, nats (Cremer et al. 2018)", "lower",
                            "amortisation gap [nats]"),
    "approximation_gap": Key("log p(x) - ELBO*, nats", "lower", "approximation gap [nats]"),
    "amortization_gap_se": se_key("amortization_gap"),
    "approximation_gap_se": se_key("approximation_gap")}, default=False))
