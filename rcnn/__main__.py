import sys

from rcnn.cli import main

sys.exit(main())
