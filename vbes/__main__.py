import sys

from vbes.cli import main

sys.exit(main())
