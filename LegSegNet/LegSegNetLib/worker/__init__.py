"""Running work in a separate process: the worker (`python -m LegSegNetLib.worker`, JSON progress on
stdout) and the launcher that starts it, reads its events and stops its whole process tree. The
worker may import the CLI and everything below it; the launcher only `core`."""
