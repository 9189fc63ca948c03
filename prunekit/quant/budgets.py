"""Does a model fit a device? Flash, RAM and latency against a board's budget.

A microcontroller keeps the model in flash (read-only, next to the program) and
runs it out of a static RAM *arena* that holds the activations. TensorFlow Lite
Micro (David et al. 2021) plans that arena before the first inference: a tensor
lives from the op that writes it to the last op that reads it, and buffers whose
lives do not overlap share memory. For a chain of layers that gives

    arena = max over ops of (bytes of the op's input + bytes of its output)

because only the tensor going in and the one coming out are alive at once. Ops that
write no new buffer are skipped: a reshape (``Flatten``), ``Identity``, ``Dropout``
at inference, and (``fuse_activations=True``, what the TFLite converter does) a
BatchNorm (folded into the weights) or a ReLU/Tanh/Sigmoid (applied to the output
in place) right after a Linear or Conv2d.

What :func:`check_budget` adds up:

* flash = model bytes (float32 parameters by default, or the size of the file you
  deploy, e.g. ``compression_report(model).bytes["file"]``) + runtime code;
* RAM = peak arena (activations at ``activation_bytes`` per value: 4 for float32,
  1 for int8) + runtime RAM;
* latency = multiply-accumulates / the device's MAC rate (dense MACs: MCU kernels
  such as CMSIS-NN do not skip pruned weights).

Runtime code on microcontrollers: "the core runtime just fits in 16 KB on an Arm
Cortex M3" (TensorFlow Lite for Microcontrollers overview, tensorflow.org); the
operator kernels a model needs come on top (the keyword-spotting example: 22 KB in
all, per the same page). The runtime RAM (interpreter state, per-tensor metadata,
stack) and the MAC rates below are *planning assumptions*, not measurements:
measure your board (TFLM's ``RecordingMicroAllocator`` reports the real arena) and
pass your own figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from .._table import Col, find_row, html_table, text_table
from .._validate import check_int, check_number, fail
from ..tensor import Tensor, no_grad
from .kmeans import SharedWeights

__all__ = ["Device", "DEVICES", "register_device", "get_device", "check_budget", "BudgetReport",
           "activation_arena", "ArenaReport"]

KB = 1024
MB = 1024 * KB
GB = 1024 * MB


@dataclass(frozen=True)
class Device:
    """A target device: memory sizes in bytes, a CPU, and planning figures for the runtime.

    ``runtime_flash`` / ``runtime_ram``: bytes the inference runtime itself takes;
    ``macs_per_second``: sustained multiply-accumulates per second for the latency estimate.
    ``source`` says where the hardware figures come from.
    """

    name: str
    flash_bytes: int
    ram_bytes: int
    cpu: str
    clock_hz: float
    runtime_flash: int
    runtime_ram: int
    macs_per_second: float
    source: str = ""

    def __repr__(self):
        return (f"Device({self.name!r}: {_fmt(self.flash_bytes)} flash, {_fmt(self.ram_bytes)} RAM, "
                f"{self.cpu} @ {self.clock_hz / 1e6:.0f} MHz)")


DEVICES = {}
"""Registered device profiles by key; add your own with :func:`register_device`."""


def register_device(key, device):
    """Add ``device`` (a :class:`Device`) under ``key``; returns it."""
    if not isinstance(key, str) or not key:
        fail("key", "a non-empty str", key, TypeError)
    if not isinstance(device, Device):
        fail("device", "a prunekit.quant.budgets.Device", type(device).__name__, TypeError)
    DEVICES[key] = device
    return device


def get_device(device):
    """A :class:`Device` from itself or a key of :data:`DEVICES`."""
    if isinstance(device, Device):
        return device
    if isinstance(device, str) and device in DEVICES:
        return DEVICES[device]
    fail("device", f"a Device or one of {sorted(DEVICES)}", device)


_TFLM = "TFLM core runtime 16 KB on a Cortex-M3 (TensorFlow Lite for Microcontrollers overview)"

register_device("arduino_nano_33_ble_sense", Device(
    "Arduino Nano 33 BLE Sense", 1 * MB, 256 * KB, "Arm Cortex-M4F (nRF52840)", 64e6,
    runtime_flash=16 * KB, runtime_ram=8 * KB, macs_per_second=32e6,
    source="Arduino Nano 33 BLE Sense datasheet: nRF52840, 64 MHz Cortex-M4F, 1 MB flash, 256 KB SRAM; " + _TFLM +
           "; runtime RAM and ~0.5 MAC/cycle (CMSIS-NN int8) assumed"))
register_device("stm32f746_discovery", Device(
    "STM32F746G Discovery", 1 * MB, 320 * KB, "Arm Cortex-M7 (STM32F746NG)", 216e6,
    runtime_flash=16 * KB, runtime_ram=8 * KB, macs_per_second=216e6,
    source="ST STM32F746NG: 216 MHz Cortex-M7, 1 MB flash, 320 KB SRAM (the board adds 8 MB SDRAM, not counted); "
           + _TFLM + "; runtime RAM and ~1 MAC/cycle assumed"))
register_device("raspberry_pi_4", Device(
    "Raspberry Pi 4 class (1 GB)", 8 * GB, 1 * GB, "4x Arm Cortex-A72 (BCM2711)", 1.5e9,
    runtime_flash=4 * MB, runtime_ram=64 * MB, macs_per_second=3e9,
    source="Raspberry Pi 4 Model B: BCM2711, 4x Cortex-A72 @ 1.5 GHz, 1-8 GB RAM (smallest taken), an 8 GB "
           "microSD card as storage; runtime (a TFLite/ONNX Runtime build plus an OS share) and ~3 GMAC/s "
           "(one core, NEON float32) assumed"))
register_device("phone", Device(
    "Phone class (mid-range, 2020s)", 64 * GB, 4 * GB, "8-core Arm big.LITTLE", 2.4e9,
    runtime_flash=8 * MB, runtime_ram=256 * MB, macs_per_second=10e9,
    source="a typical mid-range phone: 4 GB RAM, 64 GB storage; the RAM an app may use, the runtime size and "
           "~10 GMAC/s (one big core, NEON) assumed"))


def _fmt(n):
    """Bytes in the unit a reader expects (B, KB, MB, GB; 1 KB = 1024 bytes)."""
    n = float(n)
    for unit, size in (("GB", GB), ("MB", MB), ("KB", KB)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- the arena
_VIEWS = (nn.Flatten, nn.Identity, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)
_WEIGHTED = (nn.Linear, nn.Conv2d, SharedWeights)


def _flat_children(model):
    """Top-level ops of a model in order (nested Sequentials opened); any other module is one op."""
    if isinstance(model, nn.Sequential):
        for m in model:
            yield from _flat_children(m)
    else:
        yield model


def _macs(module, x_shape, y_shape):
    if isinstance(module, nn.Linear) or (isinstance(module, SharedWeights) and module.kind == "linear"):
        return int(np.prod(y_shape)) * int(x_shape[-1])
    if isinstance(module, (nn.Conv2d, SharedWeights)):
        w = module.weight.shape if isinstance(module, nn.Conv2d) else module.shape
        return int(np.prod(y_shape)) * int(np.prod(w[1:]))
    return 0


class ArenaReport:
    """The activation buffers of one forward pass: per op, what it reads and writes, and the peak.

    ``rows``: dicts with ``name, op, output_shape, input_bytes, output_bytes, live`` (bytes
    alive while the op runs; 0 for an op that writes no buffer) and ``macs``.
    ``peak`` is the arena size, ``peak_op`` the op that needs it; ``composite`` lists
    modules counted as one op (their inner buffers are not included: an underestimate;
    their MACs are counted).
    """

    def __init__(self, rows, activation_bytes, composite):
        self.rows = rows
        self.activation_bytes = activation_bytes
        self.composite = composite
        live = [r["live"] for r in rows]
        i = int(np.argmax(live)) if live else 0
        self.peak = int(live[i]) if live else 0
        self.peak_op = rows[i]["name"] if rows else None
        self.macs = int(sum(r["macs"] for r in rows))

    _COLUMNS = (Col("op", "name", "<6"), Col("type", "op", "<20"), Col("output", "output_shape", "<16"),
                Col("in", "input_bytes", ">9,d"), Col("out", "output_bytes", ">9,d"), Col("live", "live", ">9,d"),
                Col("MACs", "macs", ">11,d"))

    def _summary(self):
        return (f"peak arena {self.peak:,d} bytes at op {self.peak_op} "
                f"({self.activation_bytes} byte(s) per activation); {self.macs:,d} MACs")

    def __repr__(self):
        lines = [text_table(self._COLUMNS, self.rows), self._summary()]
        if self.composite:
            lines.append(f"(counted as one op, inner buffers not included: {', '.join(self.composite)})")
        return "\n".join(lines)

    def _repr_html_(self):
        return f"<p>{self._summary()}</p>" + html_table(self._COLUMNS, self.rows)


def activation_arena(model, input_shape, *, activation_bytes=4, fuse_activations=True) -> ArenaReport:
    """Peak activation memory of one batch-1 forward pass of ``model`` (see the module docstring).

    ``input_shape``: one sample's shape without the batch axis, e.g. ``(784,)`` or ``(1, 28, 28)``.
    """
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    try:
        input_shape = tuple(check_int("input_shape", int(d), 1) if isinstance(d, (int, np.integer)) else d
                            for d in input_shape)
    except TypeError:
        fail("input_shape", "a tuple of positive ints (one sample, no batch axis)", input_shape, TypeError)
    if not input_shape or not all(isinstance(d, int) for d in input_shape):
        fail("input_shape", "a non-empty tuple of positive ints (one sample, no batch axis)", input_shape)
    check_int("activation_bytes", activation_bytes, 1, 8)
    ops = list(_flat_children(model))
    names = [str(i) for i in range(len(ops))]
    was_training = model.training
    model.eval()
    rows, composite = [], []
    x = Tensor(np.zeros((1,) + input_shape, dtype=np.float32))
    counted = []          # MACs of every weighted layer, inner ones of composite modules included
    wrapped = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    own = {id(m): m.__dict__["forward"] for m in wrapped if "forward" in m.__dict__}
    for m in wrapped:
        def counting(inp, _m=m, _forward=m.forward):
            out = _forward(inp)
            counted.append(_macs(_m, inp.shape, out.shape))
            return out
        object.__setattr__(m, "forward", counting)    # an instance attribute, removed below
    fused_prev = False
    try:
        with no_grad():
            for i, (name, op) in enumerate(zip(names, ops)):
                counted.clear()
                try:
                    y = op(x)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"activation_arena(): op {name} ({type(op).__name__}) cannot take an input "
                                     f"of shape {x.shape[1:]} (input_shape={input_shape}): {e}") from e
                in_b = int(np.prod(x.shape[1:])) * activation_bytes
                out_b = int(np.prod(y.shape[1:])) * activation_bytes
                fused = (fuse_activations and isinstance(op, _ACTIVATIONS + (nn.BatchNorm1d, nn.BatchNorm2d))
                         and i > 0 and (isinstance(ops[i - 1], _WEIGHTED) or fused_prev))
                fused_prev = fused
                writes = not (isinstance(op, _VIEWS) or fused)
                if not isinstance(op, _WEIGHTED + _VIEWS + _ACTIVATIONS + (nn.MaxPool2d, nn.BatchNorm1d,
                                                                           nn.BatchNorm2d)) \
                        and list(op.children()):
                    composite.append(f"{name} ({type(op).__name__})")
                rows.append({"name": name, "op": type(op).__name__ + (" (fused)" if fused else ""),
                             "output_shape": tuple(y.shape[1:]), "input_bytes": in_b, "output_bytes": out_b,
                             "live": in_b + out_b if writes else 0, "macs": int(sum(counted))})
                x = y
    finally:
        for m in wrapped:
            del m.__dict__["forward"]
            if id(m) in own:
                object.__setattr__(m, "forward", own[id(m)])
        model.train(was_training)
    return ArenaReport(rows, activation_bytes, composite)


# --------------------------------------------------------------------------- the budget
class BudgetReport:
    """Flash, RAM and latency needed against a device's budget; prints what does not fit and by how much.

    ``rows``: dicts with ``resource, need, budget, fits, detail``; ``fits`` is True
    when everything fits; ``over`` maps each resource that does not fit to the excess
    (bytes, or seconds for latency). ``arena`` is the :class:`ArenaReport`.
    """

    def __init__(self, device, rows, arena):
        self.device, self.rows, self.arena = device, rows, arena
        self.over = {r["resource"]: r["need"] - r["budget"] for r in rows if r["budget"] is not None
                     and not r["fits"]}
        self.fits = not self.over

    def __getitem__(self, resource):
        return find_row(self.rows, "resource", resource)

    @staticmethod
    def _show(resource, v):
        if v is None:
            return "-"
        return f"{v * 1e3:.3g} ms" if resource == "latency" else _fmt(v)

    def _verdict(self, r):
        if r["budget"] is None:
            return "(no budget)"
        if r["fits"]:
            return f"fits ({r['need'] / r['budget']:.0%} used)"
        return f"DOES NOT FIT: over by {self._show(r['resource'], r['need'] - r['budget'])}"

    def __repr__(self):
        lines = [f"Budget check on {self.device.name} ({self.device.cpu} @ {self.device.clock_hz / 1e6:.0f} MHz)"]
        for r in self.rows:
            lines.append(f"  {r['resource']:<8} need {self._show(r['resource'], r['need']):>10}  "
                         f"budget {self._show(r['resource'], r['budget']):>10}  {self._verdict(r)}")
            lines.append(f"  {'':<8} {r['detail']}")
        lines.append("  => " + ("everything fits" if self.fits else
                                "does not fit: " + ", ".join(self.over)))
        return "\n".join(lines)

    def _repr_html_(self):
        cells = "".join(
            f"<tr><td>{r['resource']}</td><td>{self._show(r['resource'], r['need'])}</td>"
            f"<td>{self._show(r['resource'], r['budget'])}</td>"
            f"<td style='color:{'green' if r['fits'] else 'red'}'>{self._verdict(r)}</td><td>{r['detail']}</td></tr>"
            for r in self.rows)
        return (f"<table><caption>Budget check on {self.device.name}</caption><tr><th>resource</th><th>need</th>"
                f"<th>budget</th><th>verdict</th><th>made of</th></tr>{cells}</table>")


def _param_bytes(model):
    n = sum(p.size for p in model.parameters())
    n += sum(np.asarray(b).size for _, b in model.named_buffers() if np.asarray(b).dtype.kind == "f")
    return 4 * int(n)


def check_budget(model, device, *, input_shape, latency_s=None, model_bytes=None, activation_bytes=4,
                 fuse_activations=True, runtime_flash=None, runtime_ram=None) -> BudgetReport:
    """Check ``model`` against ``device``'s flash and RAM (and a latency budget); say what does not fit.

    ``device``: a :class:`Device` or a key of :data:`DEVICES` (``"arduino_nano_33_ble_sense"``,
    ``"stm32f746_discovery"``, ``"raspberry_pi_4"``, ``"phone"``). ``input_shape``: one
    sample's shape (no batch axis). ``model_bytes``: what the model takes in flash;
    None counts every float parameter and buffer at 4 bytes (pass the size of the file
    you deploy instead, e.g. ``compression_report(model).bytes["file"]``).
    ``activation_bytes``: 4 (float32) or 1 (int8 activations). ``latency_s``: the
    latency budget of one batch-1 inference in seconds (None: estimate only).
    ``runtime_flash`` / ``runtime_ram`` override the device's runtime figures.
    """
    device = get_device(device)
    arena = activation_arena(model, input_shape, activation_bytes=activation_bytes,
                             fuse_activations=fuse_activations)
    if model_bytes is None:
        model_bytes, what = _param_bytes(model), "float32 parameters"
    else:
        model_bytes, what = check_int("model_bytes", model_bytes, 0), "model file"
    rt_flash = device.runtime_flash if runtime_flash is None else check_int("runtime_flash", runtime_flash, 0)
    rt_ram = device.runtime_ram if runtime_ram is None else check_int("runtime_ram", runtime_ram, 0)
    if latency_s is not None:
        check_number("latency_s", latency_s, 0, None, "(]")
    flash = model_bytes + rt_flash
    ram = arena.peak + rt_ram
    seconds = arena.macs / device.macs_per_second
    rows = [
        {"resource": "flash", "need": flash, "budget": device.flash_bytes, "fits": flash <= device.flash_bytes,
         "detail": f"{what} {_fmt(model_bytes)} + runtime code {_fmt(rt_flash)}"},
        {"resource": "RAM", "need": ram, "budget": device.ram_bytes, "fits": ram <= device.ram_bytes,
         "detail": f"activation arena {_fmt(arena.peak)} (peak at op {arena.peak_op}, {activation_bytes} B per "
                   f"value) + runtime {_fmt(rt_ram)}"},
        {"resource": "latency", "need": seconds, "budget": latency_s,
         "fits": latency_s is None or seconds <= latency_s,
         "detail": f"{arena.macs:,d} MACs at {device.macs_per_second / 1e6:,.0f} M MAC/s (a planning estimate)"},
    ]
    return BudgetReport(device, rows, arena)
