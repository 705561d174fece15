"""The run folder's name: every hyper-parameter that a grid of the reproduction varies.

``configs/mnist.yaml`` names runs ``${run_name:${data.dataset},${model.latent_dim},...}``, an
OmegaConf resolver registered here (before LightningCLI parses anything), so that two points of
a sweep grid never share a folder name (``--ckpt_path last`` resumes the newest folder of a name):

    mnist_alpha1.0_seed0                        the default: the paper's 2-D latent, fixed alpha
    fashion_mnist_z20_alpha0.3_seed2            another latent size
    mnist_z20_constrained_kl4.0_alpha1.0_seed0  constrained mode: its KL(z'||z) target, initial alpha
    mnist_constrained_kl1.0_NuPI_alpha1.0_seed0 ... with a multiplier rule other than the default

The paper's latent size is left out of the name, so default runs keep their short, familiar name.
"""

PAPER_LATENT_DIM = 2


def run_name(dataset: str, latent_dim: int, alpha_mode: str, kl_target: float, alpha: float,
             seed: int | None, multiplier=None) -> str:
    """``multiplier``: the model.multiplier node (None, a class name, or {class_path, init_args})."""
    parts = [str(dataset)]
    if int(latent_dim) != PAPER_LATENT_DIM:
        parts.append(f"z{latent_dim}")
    if alpha_mode == "constrained":
        parts.append(f"constrained_kl{float(kl_target)}")
        if multiplier is not None:
            path = multiplier.get("class_path", "") if hasattr(multiplier, "get") else multiplier
            parts.append(str(path).rsplit(".", 1)[-1])
    parts += [f"alpha{float(alpha)}", f"seed{seed}"]
    return "_".join(parts)


def register() -> None:
    """Make ``${run_name:...}`` known to OmegaConf (idempotent)."""
    import omegaconf
    from omegaconf import OmegaConf

    if OmegaConf.has_resolver("run_name"):
        return
    # OmegaConf 2.4 renamed register_new_resolver (2.1-2.3) to register_resolver, which in 2.3
    # is the old, deprecated API with other semantics: pick by version.
    if tuple(int(p) for p in omegaconf.__version__.split(".")[:2]) >= (2, 4):
        OmegaConf.register_resolver("run_name", run_name)
    else:
        OmegaConf.register_new_resolver("run_name", run_name)
