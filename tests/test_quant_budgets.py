"""Device budgets: activation arenas and MACs worked out by hand, verdicts, bad input."""
import numpy as np
import pytest

import prunekit as pk
from prunekit import nn, quant
from prunekit import pruning as P
from prunekit.quant import budgets as B


def test_lenet5_arena_hand_computed():
    # 1x28x28 in (784 values) -> conv1 6x28x28 (4704) -> pool 6x14x14 (1176) -> conv2 16x10x10 (1600)
    # -> pool 16x5x5 (400) -> 120 -> 84 -> 10. ReLUs fused, Flatten a view.
    # live: conv1 784+4704 = 5488, pool1 4704+1176 = 5880 (the peak), conv2 2776, pool2 2000,
    # fc 520, 204, 94 values.
    a = B.activation_arena(pk.models.lenet5(seed=0), (1, 28, 28))
    live = [r["live"] // 4 for r in a.rows]
    assert live == [5488, 0, 5880, 2776, 0, 2000, 0, 520, 0, 204, 0, 94]
    assert a.peak == 5880 * 4 and a.peak_op == "2"
    # MACs: conv1 4704 outputs x 25, conv2 1600 x 150, then 400x120 + 120x84 + 84x10
    assert a.macs == 4704 * 25 + 1600 * 150 + 400 * 120 + 120 * 84 + 84 * 10 == 416_520
    # int8 activations: a quarter; without fusing, conv1's ReLU holds two 4704-value buffers
    assert B.activation_arena(pk.models.lenet5(seed=0), (1, 28, 28), activation_bytes=1).peak == 5880
    assert B.activation_arena(pk.models.lenet5(seed=0), (1, 28, 28), fuse_activations=False).peak == 9408 * 4
    assert "peak arena" in repr(a)


def test_mlp_arena_and_shared_layers():
    m = pk.models.lenet_300_100(seed=0)
    a = B.activation_arena(m, (784,))
    assert a.peak == (784 + 300) * 4 and a.macs == 784 * 300 + 300 * 100 + 100 * 10
    P.prune(m, 0.9)
    quant.share_weights(m, 4)
    b = B.activation_arena(m, (784,))           # sharing changes neither buffers nor (dense) MACs
    assert (b.peak, b.macs) == (a.peak, a.macs)
    assert not any("forward" in layer.__dict__ for layer in m.modules())   # the MAC counters are removed


def test_composite_modules_are_flagged_and_their_macs_counted():
    block = pk.models.ResidualBlock(2, 2, rng=np.random.default_rng(0))
    m = nn.Sequential(block)
    a = B.activation_arena(m, (2, 4, 4))
    assert a.composite == ["0 (ResidualBlock)"]
    assert a.macs == 2 * (2 * 4 * 4 * 2 * 9)      # two 3x3 convs, 2 -> 2 channels, 4x4 outputs
    assert a.peak == (32 + 32) * 4


def toy_device():
    return B.Device("toy board", flash_bytes=10_000, ram_bytes=5_000, cpu="toy core", clock_hz=1e6,
                    runtime_flash=1_000, runtime_ram=500, macs_per_second=1e6)


def test_check_budget_verdicts_hand_computed():
    m = pk.models.lenet_300_100(seed=0)
    r = quant.check_budget(m, toy_device(), input_shape=(784,), latency_s=0.1)
    # flash: 266,610 float32 parameters + 1,000 runtime = 1,067,440 -> over by 1,057,440
    assert r["flash"]["need"] == 266_610 * 4 + 1_000
    assert r.over["flash"] == 1_067_440 - 10_000
    # RAM: arena (784 + 300) x 4 = 4,336 + 500 = 4,836 <= 5,000: fits
    assert r["RAM"]["need"] == 4_836 and r["RAM"]["fits"]
    # latency: 266,200 MACs at 1e6 MAC/s = 0.2662 s, budget 0.1 s
    assert r["latency"]["need"] == pytest.approx(0.2662)
    assert r.over["latency"] == pytest.approx(0.1662)
    assert not r.fits and set(r.over) == {"flash", "latency"}
    text = repr(r)
    assert "DOES NOT FIT: over by 1.0 MB" in text and "does not fit: flash, latency" in text
    assert "<table>" in r._repr_html_()
    with pytest.raises(KeyError, match=r"resource must be one of \['flash', 'RAM', 'latency'\], got ROM"):
        r["ROM"]
    assert "<p>peak arena 4,336 bytes at op 0" in r.arena._repr_html_()
    # the deployed file instead of float32 parameters: 9,000 + 1,000 = 10,000 fits exactly
    ok = quant.check_budget(m, toy_device(), input_shape=(784,), model_bytes=9_000)
    assert ok.fits and ok.over == {} and "everything fits" in repr(ok)


def test_real_boards_lenet5():
    m = pk.models.lenet5(seed=0)
    nano = quant.check_budget(m, "arduino_nano_33_ble_sense", input_shape=(1, 28, 28))
    assert nano.device.ram_bytes == 256 * 1024 and nano.device.flash_bytes == 1024 * 1024
    assert nano.fits                                   # 61,706 parameters: 241 KB of float32
    big = pk.models.mlp([784, 1000, 1000, 10], seed=0)
    st = quant.check_budget(big, "stm32f746_discovery", input_shape=(784,))
    assert not st.fits and "flash" in st.over and st["RAM"]["fits"]
    assert set(B.DEVICES) >= {"arduino_nano_33_ble_sense", "stm32f746_discovery", "raspberry_pi_4", "phone"}


def test_budget_bad_input():
    m = pk.models.lenet_300_100(seed=0)
    with pytest.raises(ValueError, match="device must be"):
        quant.check_budget(m, "arduino_uno", input_shape=(784,))
    with pytest.raises(ValueError, match="op 0 .*Linear.*input_shape"):
        quant.check_budget(m, "phone", input_shape=(28, 28, 2))
    with pytest.raises(ValueError, match="input_shape must be"):
        quant.check_budget(m, "phone", input_shape=(0,))
    with pytest.raises(TypeError, match="input_shape must be"):
        quant.check_budget(m, "phone", input_shape=784)
    with pytest.raises(ValueError, match="latency_s must be"):
        quant.check_budget(m, "phone", input_shape=(784,), latency_s=-1)
    with pytest.raises(TypeError, match="device must be"):
        B.register_device("x", "not a device")
