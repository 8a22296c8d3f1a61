"""testtime: test-time training and adaptation of image classifiers under distribution shift."""

__version__ = "0.1.0"
