"""Pure plotting functions: numbers in, a matplotlib ``Figure`` out.

Figures are built with ``matplotlib.figure.Figure`` and drawn by the Agg canvas, never through
pyplot, so nothing here touches global state or the user's backend (a notebook's stays as is),
and a figure is freed as soon as the caller drops it. Arrays may be numpy or CPU tensors.
"""

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib import image as mimage
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Patch, Rectangle
from matplotlib.ticker import MaxNLocator

X_COLOUR, X_PRIME_COLOUR = "#1f77b4", "#d62728"  # q(z|x) blue, q(z'|x') red


def _pictures(images) -> np.ndarray:
    """(n, C, H, W) or (n, H, W) in [0, 1] -> (n, H, W) grey or (n, H, W, 3) colour, for imshow."""
    a = _np(images)
    if a.ndim == 4:
        a = a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)
    return a


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


def _pairs(mu, logvar, mu_prime, logvar_prime, dims: tuple[int, int]):
    """Means and one-sigma half-axes of q(z|x) and q(z'|x') on the plotted dims, each (n, 2); a
    1-D latent's second axis has zero width."""
    m, m2 = _xy(mu, dims), _xy(mu_prime, dims)
    s, s2 = np.exp(0.5 * _xy(logvar, dims)), np.exp(0.5 * _xy(logvar_prime, dims))
    if dims[0] == dims[1]:
        s[:, 1] = s2[:, 1] = 0.0
    return m, s, m2, s2


def drift_half_width(mu, logvar, mu_prime, logvar_prime, dims: tuple[int, int]) -> float:
    """Half the side of the square view that holds the widest pair of one-sigma ellipses, with a
    50% margin: one scale for every zoomed panel (and for both models in ``compare``), so that a
    longer arrow means a larger drift. (n, D) arrays in; a float out."""
    m, s, m2, s2 = _pairs(mu, logvar, mu_prime, logvar_prime, dims)
    span = np.maximum(m + s, m2 + s2) - np.minimum(m - s, m2 - s2)  # (n, 2)
    return float(max(span.max() * 0.5 * 1.5, 0.05))


def _view_centres(m, s, m2, s2) -> np.ndarray:
    """(n, 2): the centre of each image's zoomed view, midway across its two ellipses."""
    return (np.minimum(m - s, m2 - s2) + np.maximum(m + s, m2 + s2)) / 2


def _drift_panel(ax, m, s, m2, s2, centre, half: float, pts, label: str, kl: float, thumbs,
                 fontsize: float, compact: bool) -> None:
    """One image: q(z|x) and q(z'|x') as mean + 1-sigma ellipse, an arrow, in a square view of
    half-side ``half`` around ``centre`` (the same ``half`` in every panel)."""
    for c, sigma, colour in ((m, s, X_COLOUR), (m2, s2, X_PRIME_COLOUR)):
        ax.add_patch(Ellipse(c, 2 * sigma[0], 2 * sigma[1], facecolor=colour, alpha=0.25,
                             edgecolor=colour, linewidth=1.5, zorder=2))
        ax.scatter(*c, color=colour, s=20, zorder=3)
    ax.annotate("", xy=m2, xytext=m, zorder=4, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.3})
    inside = (np.abs(pts - centre) <= half).all(1)
    ax.scatter(*pts[inside].T, s=3, c="0.8", rasterized=True, zorder=0)  # neighbouring test means
    ax.set(xlim=(centre[0] - half, centre[0] + half), ylim=(centre[1] - half, centre[1] + half),
           aspect="equal")
    ax.set_title(f"'{label}': {kl:.2f} nats" if compact else f"'{label}': KL(z'||z) = {kl:.2f} nats",
                 fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)
    if compact:  # three ticks a side: a narrow panel's labels would run into each other
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.yaxis.set_major_locator(MaxNLocator(3))
    if thumbs is not None:  # x and x' in the upper corners, each named below in its colour
        for corner, image, name, colour in ((0.02, thumbs[0], "x", X_COLOUR),
                                            (0.72, thumbs[1], "x'", X_PRIME_COLOUR)):
            inset = ax.inset_axes([corner, 0.72, 0.26, 0.26])
            inset.imshow(image, cmap="gray", vmin=0, vmax=1)
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
            inset.set_xlabel(name, fontsize=fontsize + 1, labelpad=1, color=colour, fontweight="bold")


def latent_drift_figure(mu, logvar, mu_prime, logvar_prime, kl_consistency, labels, all_mu,
                        all_labels, dims: tuple[int, int], how: str = "",
                        class_names: list[str] | None = None, title: str = "",
                        images=None, images_prime=None, half: float | None = None) -> Figure:
    """The paper's Fig. 2 and a map of the whole test set (``draw_latent_drift``), as one figure.

    mu, logvar, mu_prime, logvar_prime: (n, D); kl_consistency, labels: (n,);
    all_mu: (N, D); all_labels: (N,); images, images_prime: (n, C, H, W), (n, H, W) or None.
    class_names: the dataset's (datasets.py), else the label numbers. half: the zoomed panels'
    half-width (default: ``drift_half_width`` of these images).
    """
    n = len(_np(mu))
    rows = 1 if n <= 4 else 2
    fig = Figure(figsize=(3.2 * -(-n // rows) + 6.5, 3.4 * rows + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw_latent_drift(fig, mu, logvar, mu_prime, logvar_prime, kl_consistency, labels, all_mu,
                      all_labels, dims, how, class_names, title, images, images_prime, half)
    return fig


def draw_latent_drift(container, mu, logvar, mu_prime, logvar_prime, kl_consistency, labels,
                      all_mu, all_labels, dims: tuple[int, int], how: str = "",
                      class_names: list[str] | None = None, title: str = "", images=None,
                      images_prime=None, half: float | None = None, fontsize: float = 10,
                      compact: bool = False) -> None:
    """Draw Fig. 2 into a ``Figure`` or ``SubFigure`` (``compare`` stacks two).

    Left, one panel per chosen test image: q(z|x) (blue) and the re-encoding q(z'|x') (red) as
    means with one-sigma ellipses, an arrow for the drift, KL(z'||z) in the title, and x and x'
    as thumbnails when given; every panel has the same scale. Right: the posterior means of all
    test images, coloured by class; a box marks each panel's view. Arguments: as
    ``latent_drift_figure``; compact (``compare``, on a page): short titles (the KL value only),
    three ticks per axis, no line saying what the panels show and no class legend, which the
    caller draws once for all its rows.
    """
    m, s, m2, s2 = _pairs(mu, logvar, mu_prime, logvar_prime, dims)  # (n, 2) each
    half = half or drift_half_width(mu, logvar, mu_prime, logvar_prime, dims)
    centres = _view_centres(m, s, m2, s2)
    kl, labels = _np(kl_consistency), _np(labels).astype(int)
    pts, all_labels = _xy(all_mu, dims), _np(all_labels).astype(int)
    names = list(class_names or [])
    names += [str(c) for c in range(len(names), int(max(all_labels.max(), labels.max())) + 1)]
    axis_names = [f"z{dims[0]}", f"z{dims[1]}" if dims[0] != dims[1] else "(none)"]
    thumbs = None
    if images is not None and images_prime is not None:
        thumbs = list(zip(_pictures(images), _pictures(images_prime), strict=True))

    n = len(m)
    rows = 1 if n <= 4 else 2
    cols = -(-n // rows)
    grid = container.add_gridspec(rows, cols + 2)
    panels = []
    for i in range(n):
        ax = container.add_subplot(grid[i // cols, i % cols])
        _drift_panel(ax, m[i], s[i], m2[i], s2[i], centres[i], half, pts, names[labels[i]], kl[i],
                     thumbs[i] if thumbs else None, fontsize, compact)
        if i % cols == 0:
            ax.set_ylabel(axis_names[1], fontsize=fontsize)
        if i // cols == rows - 1:
            ax.set_xlabel(axis_names[0], fontsize=fontsize)
        panels.append(ax)
    panels[0].legend(handles=[
        Patch(facecolor=X_COLOUR, edgecolor=X_COLOUR, alpha=0.5, label="q(z|x)"),
        Patch(facecolor=X_PRIME_COLOUR, edgecolor=X_PRIME_COLOUR, alpha=0.5, label="q(z'|x')"),
    ], loc="lower left", fontsize=fontsize - 2)
    _overview(container.add_subplot(grid[:, cols:]), pts, all_labels, names, centres, half,
              [names[c] for c in labels], axis_names, fontsize, compact)
    lines = [title] if title else []
    if not compact:
        lines.append(f"q(z|x) vs q(z'|x'), x' = decoder mean at z ~ q(z|x); 1-sigma ellipses, one "
                     f"scale in every panel (mean KL(z'||z) of these {n}: {kl.mean():.2f} nats)")
    container.suptitle("\n".join([*lines, how] if how else lines), fontsize=fontsize + 1)


def _overview(ax, pts, all_labels, names, centres, half, shown, axis_names, fontsize,
              compact: bool) -> None:
    """All test means by class, and a box (labelled with its class) for each zoomed panel."""
    cmap = colormaps["tab10"]
    for c in np.unique(all_labels):
        sel = all_labels == c
        ax.scatter(*pts[sel].T, s=2, color=cmap(c % 10), alpha=0.6, label=names[c], rasterized=True)
    for centre, name in zip(centres, shown, strict=True):
        ax.add_patch(Rectangle(centre - half, 2 * half, 2 * half, fill=False, edgecolor="k",
                               linewidth=1.3, zorder=3))
        ax.annotate(f"'{name}'", (centre[0] - half, centre[1] + half), fontsize=fontsize - 1,
                    ha="left", va="bottom", zorder=4,
                    path_effects=[patheffects.withStroke(linewidth=2.5, foreground="w")])
    ax.set_xlabel(axis_names[0], fontsize=fontsize)
    ax.set_ylabel(axis_names[1], fontsize=fontsize)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=fontsize - 1)
    ax.set_title(f"All {len(pts)} test means\n(boxes: the panels)" if compact else
                 f"Posterior means of all {len(pts)} test images\n(boxes: the zoomed panels)",
                 fontsize=fontsize)
    if not compact:
        legend = ax.legend(fontsize=fontsize - 1, loc="center left", bbox_to_anchor=(1.0, 0.5),
                           title="class", title_fontsize=fontsize - 1)
        for handle in legend.legend_handles:  # class dots readable in the legend
            handle.set_sizes([30])
            handle.set_alpha(1.0)


def image_rows_figure(rows, row_labels: list[str], title: str = "") -> Figure:
    """Rows of images, one label per row: rows is a list of (n, C, H, W) or (n, H, W) in [0, 1]."""
    rows = [_pictures(r) for r in rows]
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
    """(n, C, H, W) or (n, H, W) images in [0, 1] as one tiled picture with a title."""
    images = _pictures(images)
    (h, w), nrows = images.shape[1:3], -(-len(images) // ncols)
    tiles = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, *images.shape[3:]))  # 1-pixel gaps
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        tiles[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = img
    fig = Figure(figsize=(0.6 * ncols + 0.4, 0.6 * nrows + 0.7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    return fig


def render(fig: Figure) -> np.ndarray:
    """Draw a figure once on the Agg canvas: its (H, W, 4) uint8 RGBA pixels, those ``savefig``
    writes at the figure's dpi. Each draw lays the figure out again (``layout="constrained"``),
    which is most of a figure's cost: callers that need pixels and a file draw once."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array (for wandb.Image and tests)."""
    return render(fig)[..., :3]


def write_png(pixels: np.ndarray, path, dpi: float = 100) -> None:
    """Write ``render``'s pixels as a PNG, as ``savefig`` would (without drawing again)."""
    mimage.imsave(path, pixels, format="png", dpi=dpi)
