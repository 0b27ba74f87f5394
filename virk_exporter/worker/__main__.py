"""`python -m virk_exporter.worker SOCKET`: the shared monitoring worker of one model on this host."""

import sys

from virk_exporter.worker.process import main

sys.exit(main(sys.argv[1:]))
