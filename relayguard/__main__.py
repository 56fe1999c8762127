from relayguard.cli import main

raise SystemExit(main())
