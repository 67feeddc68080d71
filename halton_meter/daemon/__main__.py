from halton_meter.daemon.app import main

raise SystemExit(main())
