"""Quantization and deployment: affine int8, calibration, integer-only inference, QAT, export.

    from prunekit import quant
    qmodel = quant.quantize_model(model, (x_cal, y_cal))   # post-training static int8
    qmodel(x)                                              # float in, float out; integers inside
    quant.export(qmodel, "model.npz"); quant.load_exported("model.npz")(x)

Modules: :mod:`~prunekit.quant.affine` (scale and zero point, the TFLite rules),
:mod:`~prunekit.quant.calibration` (activation ranges), :mod:`~prunekit.quant.fixed_point`
(requantization with an integer multiplier and shift), :mod:`~prunekit.quant.modules`
(integer-only layers and :func:`quantize_model`), :mod:`~prunekit.quant.qat`
(fake quantization, straight-through estimator, fp16, bit-width scan),
:mod:`~prunekit.quant.exporter` (.npz + JSON manifest) and :mod:`~prunekit.quant.onnx_export`
(ONNX, float and QDQ; imports onnx only when called).
"""
from __future__ import annotations

from . import affine, calibration, exporter, fixed_point, modules, qat
from .affine import dequantize, fake_quantize, int_dtype, qrange, quant_params, quantize
from .calibration import Observer, available_calibrators, get_observer, register_calibrator
from .exporter import export, load_exported, read_manifest, register_kind
from .modules import QuantizedModel, QuantReport, compare, fold_batchnorm, quantize_model
from .onnx_export import export_onnx
from .qat import FakeQuant, choose_bits, convert, fake_quant, half, prepare_qat

__all__ = [
    "affine", "calibration", "fixed_point", "modules", "qat", "exporter",
    "quant_params", "quantize", "dequantize", "fake_quantize", "qrange", "int_dtype",
    "Observer", "get_observer", "register_calibrator", "available_calibrators",
    "quantize_model", "QuantizedModel", "fold_batchnorm", "compare", "QuantReport",
    "fake_quant", "FakeQuant", "prepare_qat", "convert", "half", "choose_bits",
    "export", "load_exported", "read_manifest", "register_kind", "export_onnx",
]

# ---- Deep Compression, Huffman, size accounting, device budgets (kmeans.py, huffman.py, budgets.py,
# ---- report.py) are written in a separate worktree; their imports and __all__ entries go here:
# from .kmeans import ...
# from .huffman import ...
# from .report import ...
# from .budgets import ...
# __all__ += [...]
# ---- end of the Deep Compression block
