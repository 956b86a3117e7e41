"""``python -m jsmail``: the ``jsmail`` command, for environments without its script
on ``PATH`` (as ``python -m pip`` is to ``pip``)."""

import sys

from jsmail.cli import main

sys.exit(main())
