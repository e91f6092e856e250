import sys

from agent.entry import main

sys.exit(main())
