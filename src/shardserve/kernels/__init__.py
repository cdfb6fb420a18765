"""GPU kernels, one per file, each next to the pure-torch reference it is tested against."""
