import sys

from podnet.cli import main

sys.exit(main())
