from autocompress.cli import main

raise SystemExit(main())
