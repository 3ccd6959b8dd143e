"""`python -m distfs_pipeline.status`: the documented short name of `distfs_pipeline.ops.status`.

An entry-point alias only (the command lives in its layer); `distfs-pipeline status` is the same.
"""

from distfs_pipeline.ops.status import main

if __name__ == "__main__":
    raise SystemExit(main())
