"""`python -m distfs_pipeline.adopt`: the documented short name of `distfs_pipeline.ops.adopt`.

An entry-point alias only (the command lives in its layer); `distfs-pipeline adopt` is the same.
"""

from distfs_pipeline.ops.adopt import main

if __name__ == "__main__":
    raise SystemExit(main())
