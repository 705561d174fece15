"""Pure plotting functions: numbers in, a matplotlib ``Figure`` out.

Figures are built with ``matplotlib.figure.Figure`` and drawn by the Agg canvas, never through
pyplot, so nothing here touches global state or the user's backend (a notebook's stays as is),
and a figure is freed as soon as the caller drops it. Arrays may be numpy or CPU tensors.
"""

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Patch

CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Boot"],
}
X_COLOUR, X_PRIME_COLOUR = "#1f77b4", "#d62728"  # q(z|x) blue, q(z'|x') red


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def projection_dims(all_mu) -> tuple[tuple[int, int], str]:
    """The two latent dims to plot, and how they were chosen (for the title).

    latent_dim 2: both dims. Above 2: the two dims whose posterior means vary most across the
    data (the most active units), an axis-aligned view in which a diagonal Gaussian's
    one-sigma ellipse is exact. latent_dim 1: dim 0 against a constant.
    """
    dim = _np(all_mu).shape[1]
    if dim == 1:
        return (0, 0), "1-D latent: z0 only"
    if dim == 2:
        return (0, 1), ""
    var = _np(all_mu).var(0)
    first, second = (int(d) for d in np.argsort(-var)[:2])
    return (first, second), (f"dims z{first}, z{second} of {dim}: "
                             "the two with the largest variance of the test means")


def _xy(a, dims: tuple[int, int]) -> np.ndarray:
    """(N, D) -> (N, 2) on the chosen dims; a 1-D latent gets a zero second coordinate."""
    a = _np(a)
    if dims[0] == dims[1]:
        return np.stack([a[:, dims[0]], np.zeros(len(a))], 1)
    return a[:, list(dims)]


def latent_drift_figure(mu, logvar, mu_prime, logvar_prime, kl_consistency, labels, all_mu,
                        all_labels, dims: tuple[int, int], how: str = "",
                        class_names: list[str] | None = None, title: str = "") -> Figure:
    """The paper's Fig. 2 and a map of the whole test set.

    Left: for a few test images, q(z|x) (blue) and the re-encoding q(z'|x') (red) as means with
    one-sigma ellipses, an arrow for each drift, and KL(z'||z) per image.
    Right: the posterior means of all test images, coloured by class; stars mark the left's images.
    mu, logvar, mu_prime, logvar_prime: (n, D); kl_consistency, labels: (n,);
    all_mu: (N, D); all_labels: (N,).
    """
    names = class_names or [str(c) for c in range(10)]
    m, m2 = _xy(mu, dims), _xy(mu_prime, dims)  # (n, 2)
    s, s2 = np.exp(0.5 * _xy(logvar, dims)), np.exp(0.5 * _xy(logvar_prime, dims))
    if dims[0] == dims[1]:
        s[:, 1] = s2[:, 1] = 0.0
    kl, labels = _np(kl_consistency), _np(labels).astype(int)
    pts, all_labels = _xy(all_mu, dims), _np(all_labels).astype(int)
    axis_names = [f"z{dims[0]}", f"z{dims[1]}" if dims[0] != dims[1] else "(none)"]

    fig = Figure(figsize=(13, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    # Left: zoom on the chosen encodings; the whole test set stays in light grey behind.
    lo = np.minimum(m - s, m2 - s2).min(0)
    hi = np.maximum(m + s, m2 + s2).max(0)
    pad = np.maximum(0.15 * (hi - lo), 0.05)
    left.scatter(*pts.T, s=2, c="0.85", rasterized=True, zorder=0)
    for i in range(len(m)):
        for centre, sigma, colour in ((m[i], s[i], X_COLOUR), (m2[i], s2[i], X_PRIME_COLOUR)):
            left.add_patch(Ellipse(centre, 2 * sigma[0], 2 * sigma[1], facecolor=colour, alpha=0.18,
                                   edgecolor=colour, linewidth=1.5, zorder=2))
        left.scatter(*m[i], color=X_COLOUR, s=30, zorder=3)
        left.scatter(*m2[i], color=X_PRIME_COLOUR, s=30, zorder=3)
        left.annotate("", xy=m2[i], xytext=m[i], zorder=4,
                      arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.2})
        left.annotate(f"'{names[labels[i]]}'  KL={kl[i]:.2f}", m[i], xytext=(6, 6),
                      textcoords="offset points", fontsize=9, zorder=5)
    left.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]),
             xlabel=axis_names[0], ylabel=axis_names[1],
             title=f"q(z|x) vs q(z'|x') for {len(m)} test images (mean, 1-sigma ellipse)\n"
                   f"KL(z'||z) per image, mean {kl.mean():.3f} nats")
    left.legend(handles=[
        Patch(facecolor=X_COLOUR, edgecolor=X_COLOUR, alpha=0.5, label="q(z|x): mean, 1 sigma"),
        Patch(facecolor=X_PRIME_COLOUR, edgecolor=X_PRIME_COLOUR, alpha=0.5,
              label="q(z'|x'): re-encoded decoder mean"),
        Line2D([], [], color="k", marker=r"$\rightarrow$", linestyle="None", markersize=14,
               label="drift of the mean"),
    ], loc="best", fontsize=9)

    # Right: the whole test set by class.
    cmap = colormaps["tab10"]
    for c in np.unique(all_labels):
        sel = all_labels == c
        right.scatter(*pts[sel].T, s=2, color=cmap(c % 10), alpha=0.6, label=names[c], rasterized=True)
    right.scatter(*m.T, marker="*", s=180, color="k", edgecolor="w", zorder=3, label="shown left")
    right.set(xlabel=axis_names[0], ylabel=axis_names[1],
              title=f"Posterior means of all {len(pts)} test images, by class")
    legend = right.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class")
    for handle in legend.legend_handles:  # legend dots readable, the star not huge
        handle.set_sizes([30])
        handle.set_alpha(1.0)
    fig.suptitle(" | ".join(t for t in (title, how) if t), fontsize=12)
    return fig


def image_rows_figure(rows, row_labels: list[str], title: str = "") -> Figure:
    """Rows of images, one label per row: rows is a list of (n, 28, 28) arrays in [0, 1]."""
    rows = [_np(r).reshape(len(r), 28, 28) for r in rows]
    n = max(len(r) for r in rows)
    fig = Figure(figsize=(1.0 * n + 1.2, 1.05 * len(rows) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(rows), n, squeeze=False))
    for r, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
            else:
                ax.set_axis_off()
        axes[r, 0].set_ylabel(label, fontsize=10)
    fig.suptitle(title, fontsize=12)
    return fig


def image_grid_figure(images, ncols: int = 8, title: str = "") -> Figure:
    """(n, 28, 28) images in [0, 1] as one tiled grayscale picture with a title."""
    images = _np(images).reshape(-1, 28, 28)
    nrows = -(-len(images) // ncols)
    tiles = np.ones((nrows * 29 + 1, ncols * 29 + 1))  # 1-pixel white gaps between tiles
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        tiles[1 + r * 29: 1 + r * 29 + 28, 1 + c * 29: 1 + c * 29 + 28] = img
    fig = Figure(figsize=(0.6 * ncols + 0.4, 0.6 * nrows + 0.7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array (for wandb.Image and tests)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
