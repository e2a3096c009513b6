import sys

from pipeline.stages.runner import main

sys.exit(main())
