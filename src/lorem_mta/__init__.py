"""LOREM (Learning Long-Range Representations with Equivariant Messages) for metatomic."""

__version__ = "0.1.0"
