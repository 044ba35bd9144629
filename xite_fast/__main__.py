from xite_fast.cli.main import main

raise SystemExit(main())
