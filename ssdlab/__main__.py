import sys

from ssdlab.cli import main

sys.exit(main())
