"""Side-by-side measurements (BENCHMARKS.md records their commands and figures); each is a
script, and a module the tests import (`from benchmarks import scaling`)."""
