"""gur_lightning: unsupervised visible-infrared person re-ID with Lightning and Hydra."""

__version__ = "0.1.0"
