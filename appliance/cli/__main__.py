"""``python -m appliance.cli`` runs the ``greenhouse`` command."""

import sys

from appliance.cli import main

sys.exit(main())
