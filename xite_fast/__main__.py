from xite_fast.cli import main

raise SystemExit(main())
