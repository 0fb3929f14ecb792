"""Tools above the package's layers: benchmarks and drivers that compose runtime, export,
ros and evaluation (nothing below imports them)."""
