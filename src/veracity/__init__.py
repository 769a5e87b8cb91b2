"""veracity: sound bounds and verification for neural networks."""

__version__ = "0.1.0"
