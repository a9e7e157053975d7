"""Proof of Deep Learning Training over MPI: data-parallel training that proves each rank's work."""

__version__ = "0.1.0"
