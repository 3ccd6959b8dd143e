"""distfs_pipeline: audit DistFS content-addressed blob stores with adaptive storage-challenge rounds."""

__version__ = "0.1.0"
