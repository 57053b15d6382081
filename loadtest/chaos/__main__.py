import sys

from loadtest.chaos.runner import main

sys.exit(main())
