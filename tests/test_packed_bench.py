"""`consistency-vae bench --pack N` (consistency_vae/packed/bench.py): user mistakes
in one line, and its rates measured on a real worker (a short run)."""

import pytest

from consistency_vae import bench
from consistency_vae.errors import ConfigError
from consistency_vae.packed import bench as packed_bench


@pytest.mark.parametrize("argv", [["--pack", "0"], ["--pack=0"]])
def test_the_packed_bench_refuses_an_empty_pack_in_one_line(argv):
    assert packed_bench.asks_for_pack(argv) and not packed_bench.asks_for_pack(["--epochs", "1"])
    with pytest.raises(ConfigError, match="--pack 0: give the number of members per process"):
        packed_bench.main(argv)


def test_bench_with_pack_reaches_the_packed_bench():
    # consistency_vae/bench.py's hook; the solo bench's parser would end in SystemExit on --pack
    with pytest.raises(ConfigError, match="--pack 0: give the number of members per process"):
        bench.main(["--pack", "0"])


def test_a_pack_worker_reports_model_steps_per_second(one_thread, data_dir):
    # n members * steps / seconds: 2 members of 2 steps on a 2-core machine is well above 0.1/s
    rate = packed_bench.pack_worker(str(data_dir), steps=2, n=2)
    assert 0.1 < rate < 1e5
