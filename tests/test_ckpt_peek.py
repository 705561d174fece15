"""ckpt_peek reads a checkpoint's plain entries without torch (for `consistency-vae runs`): the
same values torch.load gives, on a real Lightning checkpoint and on one with odd objects in it."""

import collections
import fractions

import pytest
import torch

from consistency_vae import ckpt_peek
from tests.conftest import ROOT

LIGHTNING_CKPT = ROOT / "tests/fixtures/mnist_alpha1_hidden32_v0.1.ckpt"


def plain(value):
    """The entries ckpt_peek keeps: dicts, lists, tuples, numbers and strings, recursively."""
    if isinstance(value, dict) and not isinstance(value, ckpt_peek.Opaque):
        return {k: plain(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def test_a_lightning_checkpoint_reads_as_torch_loads_it():
    peeked = ckpt_peek.read(LIGHTNING_CKPT)
    loaded = torch.load(LIGHTNING_CKPT, map_location="cpu", weights_only=False)
    for key in ("epoch", "global_step", "loops", "pytorch-lightning_version"):
        assert peeked[key] == plain(loaded[key]), key
    assert list(peeked["state_dict"]) == list(loaded["state_dict"])  # names kept, tensors opaque
    assert all(isinstance(v, ckpt_peek.Opaque) for v in peeked["state_dict"].values())


def test_objects_read_as_opaque_and_nothing_is_called(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"loops": collections.OrderedDict(a=1, b=[2, (3, "x")]), "w": torch.ones(3),
                "obj": fractions.Fraction(1, 3), "n": 2**70}, path)
    peeked = ckpt_peek.read(path)
    assert peeked["loops"] == collections.OrderedDict(a=1, b=[2, (3, "x")]) and peeked["n"] == 2**70
    assert isinstance(peeked["w"], ckpt_peek.Opaque) and isinstance(peeked["obj"], ckpt_peek.Opaque)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04truncated"])
def test_a_file_that_is_not_a_torch_zip_is_a_value_error(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.ckpt"):
        ckpt_peek.read(path)
