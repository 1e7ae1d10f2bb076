from notebookd.cli import main

raise SystemExit(main())
