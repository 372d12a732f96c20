from bandmate.cli import main

raise SystemExit(main())
