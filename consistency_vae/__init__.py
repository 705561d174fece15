"""consistency-vae: VAEs trained with the consistency loss of "Towards Consistent Variational
Auto-Encoding" (AAAI 2020 student abstract), on Lightning."""

__version__ = "0.1.0"
