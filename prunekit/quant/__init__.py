"""Quantization and compression (stub of part B: k-means sharing, Huffman, size accounting, budgets)."""
from .kmeans import SharedWeights, SharingReport, codebooks, kmeans_1d, share_weights

__all__ = ["kmeans_1d", "share_weights", "SharedWeights", "SharingReport", "codebooks"]
