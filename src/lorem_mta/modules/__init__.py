"""Pure-torch LOREM building blocks, one module per stage of the network."""

from .backbone import BackboneOutput, LoremBackbone

__all__ = ["BackboneOutput", "LoremBackbone"]
