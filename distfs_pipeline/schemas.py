"""`python -m distfs_pipeline.schemas`: the documented short name of `distfs_pipeline.pipeline.schemas`.

An entry-point alias only (the command lives in its layer); `distfs-pipeline schemas` is the same.
"""

from distfs_pipeline.pipeline.schemas import main

if __name__ == "__main__":
    raise SystemExit(main())
