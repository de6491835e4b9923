from vimpac.cli import main

raise SystemExit(main())
