"""Quantization and compression (stub of part B: k-means sharing, Huffman, size accounting, budgets)."""
from . import huffman
from .budgets import BudgetReport, Device, DEVICES, check_budget
from .huffman import HuffmanStream, huffman_decode, huffman_encode
from .kmeans import SharedWeights, SharingReport, codebooks, kmeans_1d, share_weights, unshare
from .report import CompressionReport, compression_report, load_compressed, save_compressed

__all__ = ["kmeans_1d", "share_weights", "SharedWeights", "SharingReport", "codebooks", "unshare",
           "huffman", "HuffmanStream", "huffman_encode", "huffman_decode",
           "compression_report", "CompressionReport", "save_compressed", "load_compressed",
           "check_budget", "BudgetReport", "Device", "DEVICES"]
