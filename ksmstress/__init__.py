"""ksmstress: stress and systematic race testing of the Linux 2.6.33 KSM / anon_vma / rmap design.

Real OS processes over one shared-memory arena stand in for mms, ksmd and reclaim; a seed-reproducible
scheduler interleaves them and detectors turn races into named failures.
"""

__version__ = "0.1.0"
