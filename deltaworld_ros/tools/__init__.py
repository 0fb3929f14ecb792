"""Tools above the package's layers: the benchmarks, and drivers of the node and the evaluation
from outside (the node benchmark, the soak, the demo, the process harness the node tests share).
Nothing below imports them."""
