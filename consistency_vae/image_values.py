"""What the numbers in your own data mean: pixels become grey levels in [0, 1], labels class numbers.

The networks see grey levels in [0, 1] (the range of the Bernoulli likelihood). One rule for every
format that bring-your-own data reads (image_files.py) and for what a registered ``load`` returns:

    stored as                                          becomes
    uint8: 8-bit PNG/JPEG/..., PIL L, RGB, palette     value / 255
    uint16: 16-bit PNG (PIL I;16), uint16 arrays       value / 65535
    PIL I (32-bit integer, older Pillow's 16-bit PNG)  value / 65535; refused outside 0..65535
    bool arrays, 1-bit images (PIL 1)                  0 or 1
    float: PIL F (float TIFF), float16/32/64 arrays    as is; refused outside [0, 1] or not finite
    any other integer array (int8..int64, uint32...)   refused: its range is not known

Refused means a ``DataError`` naming the file, the minimum and maximum seen, and the fix: guessing a
range (dividing by the maximum seen) would scale each file, and each split, differently.
Alpha (RGBA, LA, PA, a palette or grey PNG with a transparent colour) is composited over black: a
transparent pixel is background, 0, as in MNIST, not whatever colour the file keeps under it.

8-bit data stays uint8 until the data module's ``setup`` (a quarter of the memory); 16-bit and
float data are held as float32 in [0, 1] (uint8 would drop their low bits).
Labels are class numbers 0..K-1 (K: the number of class names; without names, any number >= 0, and
the figures name classes by number). Float labels are accepted when every one is a whole number
(1.0, as some tools save them); 1.7 or -1 is refused, never truncated or wrapped around.
"""

import numpy as np
import torch
from torch import Tensor

from consistency_vae.errors import DataError

UINT16_MAX = 65535


def unit_array(x: np.ndarray, what: str) -> np.ndarray:
    """Pixels by the rule above -> uint8 (grey levels 0..255) or float32 in [0, 1], same shape.
    ``what`` names the file and array in the messages ("data.npz: images")."""
    kind, size = x.dtype.kind, x.dtype.itemsize
    if kind == "u" and size == 1:
        return x
    if kind == "b":
        return x.astype(np.uint8) * np.uint8(255)  # {0, 1} once divided by 255
    if kind == "u" and size == 2:
        return x.astype(np.float32) / UINT16_MAX
    if kind == "f":
        check_unit_range(x, what)
        return x.astype(np.float32, copy=False)
    lo, hi = (x.min(), x.max()) if x.size else (0, 0)
    raise DataError(f"{what}: pixels of dtype {x.dtype} (min {lo}, max {hi}) have no known range: "
                    f"store uint8 (0-255), uint16 (0-65535) or floats in [0, 1], e.g. "
                    f"{_fix(float(lo), float(hi))}")


def unit_float(images: Tensor) -> Tensor:
    """Checked images (uint8, or float in [0, 1]) -> float32 grey levels in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def check_unit_range(x: np.ndarray | Tensor, what: str) -> None:
    """Float pixels must already be grey levels: finite, in [0, 1]."""
    x = torch.as_tensor(x)
    if not x.numel():
        return
    finite = torch.isfinite(x)
    if not finite.all():
        i = int((~finite).flatten().nonzero()[0])
        raise DataError(f"{what}: pixel {i} (flat index) is {x.flatten()[i].item()}: float pixels must "
                        "be finite grey levels in [0, 1]; replace the NaN/inf values")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise DataError(f"{what}: float pixels must lie in [0, 1], got min {lo:g}, max {hi:g}: "
                        f"{_fix(lo, hi)}")


def _fix(lo: float, hi: float) -> str:
    if lo >= 0 and hi <= 255:
        return "divide by 255 (grey levels 0-255), or store them as uint8"
    if lo >= 0 and hi <= UINT16_MAX:
        return "divide by 65535 (16-bit grey levels), or store them as uint16"
    return "rescale to [0, 1] yourself, (x - min) / (max - min) with one min and max for all splits"


def pil_pixels(img, grey: bool, file) -> np.ndarray:
    """One PIL image -> (H, W) if ``grey`` else (H, W, 3), uint8 (8-bit files) or float32 in
    [0, 1] (16-bit and float files), by the rule above."""
    from PIL import Image

    mode = img.mode
    if mode == "F" or mode.startswith("I"):  # F, I, I;16, I;16B...: grey, more than 8 bits
        x = np.array(img)  # a writable copy: check_unit_range reads it through torch
        if mode == "I":  # int32: 16-bit data in older Pillow, or a 32-bit TIFF
            lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
            if lo < 0 or hi > UINT16_MAX:
                raise DataError(f"{file}: a 32-bit integer image (PIL mode I) with values {lo}..{hi}, "
                                "outside 16 bits (0-65535): save it as an 8- or 16-bit PNG, or as "
                                "a float TIFF in [0, 1]")
            x = x.astype(np.uint16)
        x = unit_array(x, f"{file} (PIL mode {mode})")
        return x if grey else np.repeat(x[..., None], 3, axis=-1)  # (H, W, 3), as PIL's L -> RGB
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return np.asarray(img.convert("L" if grey else "RGB"))


def is_grey(mode: str) -> bool:
    """Grey PIL modes give C = 1; any other (RGB, RGBA, palette, CMYK...) gives C = 3."""
    return mode in ("1", "L", "LA", "La", "F") or mode.startswith("I")


def class_numbers(labels, what: str, classes: int | None) -> Tensor:
    """Labels (N,) (any integer or float dtype, array or tensor) -> long (N,), each in
    [0, classes) (``classes`` None: any number >= 0)."""
    x = np.asarray(labels).reshape(-1)
    names = f" ({classes} class names)" if classes else ""
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x) | (x != np.round(x))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{what}: label {x[i]} at index {i} is not a class number: labels are whole "
                            f"numbers 0..{classes - 1 if classes else 'K-1'}{names}; save them as "
                            "integers (labels.astype(np.int64)), not as scores or one-hot")
    elif x.dtype.kind not in "iub":
        raise DataError(f"{what}: labels of dtype {x.dtype}: save them as integers (np.int64)")
    bad = (x < 0) | (x >= classes) if classes else x < 0  # before the cast: uint64 cannot wrap
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = f"0..{classes - 1}{names}" if classes else "0 or more"
        raise DataError(f"{what}: label {x[i]} at index {i} is outside {allowed}: labels count classes "
                        "from 0; renumber them (np.unique(labels, return_inverse=True)[1])"
                        + (", or give one class name per class" if classes else ""))
    return torch.from_numpy(x.astype(np.int64))
