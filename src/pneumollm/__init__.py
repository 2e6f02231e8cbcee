"""PneumoLLM experiment suite: data, models, training and analysis for pneumoconiosis diagnosis."""

import os as _os

# OpenMP threads that wait for work sleep instead of spinning: on a shared or oversubscribed CPU (a laptop, a lab
# server, CI's two cores) spinning threads made a CPU sweep up to 8x slower. Set before torch loads OpenMP, so it
# holds in every console script and in the processes they start; an explicit OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
