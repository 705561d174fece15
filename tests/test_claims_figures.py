"""results/gaps.png plots the ELBO's gap to log p(x) that claim 2 tests: by quadrature where a
setting's runs have it (a 2-D latent), else to the IWAE bound, each panel naming its estimate."""

import statistics

import pytest

from consistency_vae.reproduction.claims_figures import GAPS, against_alpha


def runs(setting: str, quadrature: bool) -> list[dict]:
    out = []
    for alpha in (0.0, 1.0, 3.0):
        for seed in range(3):
            record = {"dataset": "mnist", "setting": setting, "kl_target": None, "alpha_init": alpha,
                      "seed": seed, "iwae_gap": 10.0 + alpha + seed, "amortization_gap": 1.0,
                      "approximation_gap": 2.0}
            if quadrature:
                record["log_likelihood_gap"] = 20.0 + alpha + seed
            out.append(record)
    return out


@pytest.mark.parametrize("quadrature_at_2d", [True, False])
def test_the_gap_row_plots_the_estimate_each_setting_has(quadrature_at_2d):
    records = runs("paper", quadrature=quadrature_at_2d) + runs("20d", quadrature=False)
    fig = against_alpha(records, GAPS, "gaps")
    first_row = fig.axes[:2]  # row-major: the first row's two settings (2-D first)
    expected = ["log_likelihood_gap" if quadrature_at_2d else "iwae_gap", "iwae_gap"]
    labels = {"log_likelihood_gap": "log p(x) - ELBO [nats]", "iwae_gap": "IWAE - ELBO gap [nats]"}
    for ax, setting, key in zip(first_row, ("paper", "20d"), expected, strict=True):
        assert ax.get_ylabel() == labels[key]
        y = list(ax.lines[0].get_ydata())
        means = [statistics.fmean(r[key] for r in records if r["setting"] == setting and r["alpha_init"] == a)
                 for a in (0.0, 1.0, 3.0)]
        assert y == pytest.approx(means, rel=1e-12)  # float64 means of the same numbers
    assert fig.axes[3].get_ylabel() == ""  # a plain key (row 2): labelled in the first column only
