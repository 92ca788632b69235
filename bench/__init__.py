"""The benchmark harness (``campaign-writer bench``) and micro-benchmarks; see README.md.

Harness modules: :mod:`.runner` (command line, orchestration), :mod:`.scenarios`,
:mod:`.subjects` and :mod:`.peers` (what is measured), :mod:`.load` (the load
generator), :mod:`.procs` (child processes, /proc), :mod:`.special` (queue filling,
intake, memory), :mod:`.measure` and :mod:`.analysis` (figures), :mod:`.report`,
:mod:`.markdown` and :mod:`.plots` (the output), :mod:`.rebuild` (the output again,
from saved runs).
"""

__all__: list[str] = []
