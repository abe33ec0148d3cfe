from ocifs.cli import main

raise SystemExit(main())
