"""Allow ``python -m cpmae`` (the Slicer module starts jobs this way)."""
from cpmae.cli import main

raise SystemExit(main())
