import sys

from seqvision.cli import main

sys.exit(main())
