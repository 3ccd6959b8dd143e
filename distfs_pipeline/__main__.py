"""`python -m distfs_pipeline`: see `app.main`."""

from __future__ import annotations

from .app import main

if __name__ == "__main__":
    main()
