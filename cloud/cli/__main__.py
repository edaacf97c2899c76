"""`python -m cloud.cli`: the same as the `tendril` command."""

import sys

from cloud.cli.main import main

sys.exit(main())
