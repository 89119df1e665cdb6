import sys

from humans300m.cli import main

sys.exit(main())
