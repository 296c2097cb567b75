"""`python -m autocompress.cli ...`: the same as the `autocompress` command."""

from autocompress.cli import main

raise SystemExit(main())
