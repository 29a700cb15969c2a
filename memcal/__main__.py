from memcal.cli import main

raise SystemExit(main())
