"""The real kernel as oracle: `ksmstress kernel` runs each workload on the model and on the running Linux KSM and
compares the counters phase by phase (workload.py: what a workload is; reader.py: the files and the action grammar;
structure.py: which processes and pages exist as the actions run; generate.py: random workloads; model.py and
real.py: the two sides; sysfs.py: the kernel's knobs, lock and restore; compare.py: the tables; command.py: the
subcommand)."""

from .command import add_parser
from .workload import WorkloadError

__all__ = ["WorkloadError", "add_parser"]
