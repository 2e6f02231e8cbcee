"""``python -m pneumollm.cli.paths [conf|experiments]``: print the package's config folder (or its sweep files'
folder), for ``--config-dir`` outside a checkout."""

from __future__ import annotations

import sys

from pneumollm.paths import conf_dir, experiments_dir


def main(argv: list[str] | None = None) -> None:
    """Print ``experiments_dir()`` for ``experiments``, else ``conf_dir()``."""
    args = sys.argv[1:] if argv is None else argv
    print(experiments_dir() if args == ["experiments"] else conf_dir())


if __name__ == "__main__":
    sys.exit(main())
