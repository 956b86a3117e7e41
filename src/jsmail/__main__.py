"""``python -m jsmail``: the ``jsmail`` command, for environments without its script
on ``PATH`` (as ``python -m pip`` is to ``pip``)."""

import sys

from jsmail.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(main())
