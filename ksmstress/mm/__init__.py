"""The modelled 2.6.33 kernel: memory.c (faults, COW), mm (mmap, fork, exit), rmap.c, ksm.c, over the arena."""
