"""`python -m panda` runs the command line."""

from panda.cli import main

raise SystemExit(main())
