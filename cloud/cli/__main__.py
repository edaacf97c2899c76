"""`python -m tendril_transactive.cloud.cli`: the same as the `tendril` command."""

import sys

from tendril_transactive.cloud.cli.main import main

sys.exit(main())
