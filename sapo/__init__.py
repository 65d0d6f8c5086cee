"""sapo: self-evolution of small reasoners with process supervision, on PyTorch Lightning."""

__version__ = "0.1.0"
