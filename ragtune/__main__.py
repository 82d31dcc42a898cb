import sys

from ragtune.cli import main

sys.exit(main())
