from shardfuzz.cli import main

raise SystemExit(main())
