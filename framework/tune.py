"""``python -m framework.tune``: search the learning rate with Ray Tune (ASHA, HyperBand or
Population Based Training), each trial one training run, on this machine or a Ray cluster.

The logic lives in :mod:`framework.search.ray_tune`; this entry only checks that Ray is
installed (one ``error:`` line and exit status 2 when it is not).
"""
from __future__ import annotations

import sys
from typing import Optional

#: The line printed when Ray Tune cannot be imported.
MISSING_RAY = "error: python -m framework.tune needs Ray; pip install 'lrframe[ray]'"


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``python -m framework.tune <overrides>``; the exit status (2: Ray missing or a
    command-line mistake)."""
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:
        print(MISSING_RAY, file=sys.stderr)
        return 2
    from framework.search.ray_tune import main as tune_main

    return tune_main(argv)


if __name__ == "__main__":
    sys.exit(main())
