"""Experiments: the sweep job, the personalisation and SteerX studies and comparison, the
demo, and the simulator that writes the shipped demo set. They write results to disk; the
reporting layer reads them."""
