"""`python -m distfs_pipeline.sweep`: the documented short name of `distfs_pipeline.studies.sweep`.

An entry-point alias only (the command lives in its layer); `distfs-pipeline sweep` is the same.
"""

from distfs_pipeline.studies.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
