"""``python -m byok.cli`` is the ``byok`` command."""

import sys

from byok.cli import main

sys.exit(main())
