"""The virtual cell and its instruments, with fault injection."""
