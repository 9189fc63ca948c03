"""Quantization, compression and deployment: affine int8, calibration, integer-only inference,
QAT, Deep Compression (k-means sharing + Huffman), export, device budgets.

    from prunekit import quant
    qmodel = quant.quantize_model(model, (x_cal, y_cal))   # post-training static int8
    qmodel(x)                                              # float in, float out; integers inside
    quant.export(qmodel, "model.npz"); quant.load_exported("model.npz")(x)

    quant.share_weights(pruned_model, 5)                   # Deep Compression (Han, Mao & Dally 2016):
    print(quant.compression_report(pruned_model))          # 32 shared values per layer, bytes per stage
    quant.save_compressed(pruned_model, "small.npz")       # the file, measured (Huffman-coded)
    quant.check_budget(model, "arduino_nano_33_ble_sense", input_shape=(784,))

Modules: :mod:`~prunekit.quant.affine` (scale and zero point, the TFLite rules),
:mod:`~prunekit.quant.calibration` (activation ranges), :mod:`~prunekit.quant.fixed_point`
(requantization with an integer multiplier and shift), :mod:`~prunekit.quant.modules`
(integer-only layers and :func:`quantize_model`), :mod:`~prunekit.quant.qat`
(fake quantization, straight-through estimator, fp16, bit-width scan),
:mod:`~prunekit.quant.exporter` (.npz + JSON manifest), :mod:`~prunekit.quant.onnx_export`
(ONNX, float and QDQ; imports onnx only when called), :mod:`~prunekit.quant.kmeans` (weight
sharing), :mod:`~prunekit.quant.huffman` (canonical Huffman, relative indices),
:mod:`~prunekit.quant.report` (size accounting and the compressed file) and
:mod:`~prunekit.quant.budgets` (device profiles and budget checks).
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

# Deep Compression, Huffman, size accounting, device budgets
from . import budgets, huffman, kmeans, report  # noqa: E402
from .budgets import DEVICES, BudgetReport, Device, check_budget  # noqa: E402
from .huffman import HuffmanStream, huffman_decode, huffman_encode  # noqa: E402
from .kmeans import SharedWeights, SharingReport, codebooks, kmeans_1d, share_weights, unshare  # noqa: E402
from .report import CompressionReport, compression_report, load_compressed, save_compressed  # noqa: E402

__all__ += [
    "kmeans", "huffman", "report", "budgets",
    "kmeans_1d", "share_weights", "SharedWeights", "SharingReport", "codebooks", "unshare",
    "HuffmanStream", "huffman_encode", "huffman_decode",
    "compression_report", "CompressionReport", "save_compressed", "load_compressed",
    "check_budget", "BudgetReport", "Device", "DEVICES",
]
