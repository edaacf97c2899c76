"""`python -m tendril_transactive.dashboards [--check]`: regenerate or verify dashboards/json/."""

from __future__ import annotations

import sys

from tendril_transactive.dashboards.export import stale, write


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        bad = stale()
        if bad:
            print("dashboards/json is out of date with the code (run `python -m tendril_transactive.dashboards`): "
                  + ", ".join(bad))
            return 1
        print("dashboards/json matches the code")
        return 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
