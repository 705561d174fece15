"""Tick marks a reader can read: log axes in plain numbers, alpha axes with a label at each alpha.

Shared by the training curves, the sweep report and the reproduction's figures. Call these after
everything is drawn on the axes: they read the final limits.
"""

import math

from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

HALF_DECADE_SUBS = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)  # about two labels per half decade
NICE_ALPHAS = tuple(m * 10.0 ** e for e in range(-4, 5) for m in (1.0, 3.0))  # 1e-4, 3e-4 ... 3e4


def plain(value: float, _pos=None) -> str:
    """0.5, 1, 20, 1e+04: three significant digits, never 5x10^-1 in math text."""
    return f"{value:.3g}"


def plain_log_ticks(ax, which: str = "y") -> None:
    """Log-scale ticks labelled as plain numbers, never 6x10^-1 in math text (matplotlib's labels
    of minor ticks). Over a decade or more: 1, 2, 5 steps; over half a decade or more: 1, 1.5, 2,
    3, 5, 7; over less, linear steps (0.8, 1.0, 1.2), else one tick or none would carry a label."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    decades = math.log10(hi / lo) if lo > 0 else math.inf
    if decades >= 1:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    elif decades >= 0.5:
        axis.set_major_locator(LogLocator(subs=HALF_DECADE_SUBS))
    else:
        axis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(plain))
    axis.set_minor_formatter(NullFormatter())


def alpha_axis(ax, alphas, which: str = "x") -> float:
    """A symlog alpha axis on which alpha = 0 (the plain VAE) is a point: linear below the smallest
    positive alpha, logarithmic above. A label at every alpha when there are at most 8 (a grid),
    else at 0 and the 1-3-10 steps in range (a Bayesian search's alphas are anything); the limits
    reach a marker's width past the end alphas, so no marker is cut by the axes. Returns the
    linear threshold."""
    alphas = sorted({float(a) for a in alphas})
    positive = [a for a in alphas if a > 0]
    linthresh = min(positive) if positive else 1.0
    getattr(ax, f"set_{which}scale")("symlog", linthresh=linthresh)
    if len(alphas) <= 8:
        ticks = alphas
    else:
        ticks = [a for a in alphas if a == 0] + [a for a in NICE_ALPHAS
                                                 if positive and min(positive) <= a <= max(positive)]
    getattr(ax, f"set_{which}ticks")(ticks, [plain(a) for a in ticks])
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_minor_locator(NullLocator())  # symlog's minor ticks mark nothing a reader needs
    # 0.3 of a linear threshold below 0, a factor 1.6 (0.2 decade) above the largest alpha
    low = min(alphas[0], 0.0) - 0.3 * linthresh if alphas[0] <= 0 else alphas[0] / 1.6
    high = (alphas[-1] * 1.6) if alphas[-1] > 0 else 0.3 * linthresh
    getattr(ax, f"set_{which}lim")(low, high)
    return linthresh
