from minimaskrcnn.cli import main

raise SystemExit(main())
