"""`python -m kvmesh`: the same command line as the `kvmesh` script."""

import sys

from kvmesh.cli import main

sys.exit(main())
