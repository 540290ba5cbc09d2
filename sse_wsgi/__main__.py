from sse_wsgi.cli import main

raise SystemExit(main())
