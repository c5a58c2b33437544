from drgrade.cli import main

raise SystemExit(main())
