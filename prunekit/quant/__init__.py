"""Quantization and compression for edge devices.

Part B (this stub; the lead merges it with the affine int8 / PTQ / QAT / export part):
Deep Compression (Han, Mao & Dally 2016) and device budgets.

    from prunekit import pruning, quant
    pruning.prune(model, 0.9)                        # 1. prune (then fine-tune)
    quant.share_weights(model, 5)                    # 2. k-means: 32 shared values per layer
    fit(model, loader, SGD(quant.codebooks(model), lr=1e-4), 2)   #    fine-tune the centroids
    print(quant.compression_report(model))           # 3. bytes per stage, Huffman included
    quant.save_compressed(model, "model.npz")        #    the file, measured
    quant.check_budget(model, "arduino_nano_33_ble_sense", input_shape=(784,))

Modules: ``kmeans`` (weight sharing), ``huffman`` (canonical Huffman, relative
indices), ``report`` (size accounting and the compressed file), ``budgets``.
"""
from . import huffman
from .budgets import BudgetReport, Device, DEVICES, check_budget
from .huffman import HuffmanStream, huffman_decode, huffman_encode
from .kmeans import SharedWeights, SharingReport, codebooks, kmeans_1d, share_weights, unshare
from .report import CompressionReport, compression_report, load_compressed, save_compressed

__all__ = ["kmeans_1d", "share_weights", "SharedWeights", "SharingReport", "codebooks", "unshare",
           "huffman", "HuffmanStream", "huffman_encode", "huffman_decode",
           "compression_report", "CompressionReport", "save_compressed", "load_compressed",
           "check_budget", "BudgetReport", "Device", "DEVICES"]
