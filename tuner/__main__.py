"""`python -m hetcache.tuner` runs hetcache-tune."""

from .cli import main

raise SystemExit(main())
