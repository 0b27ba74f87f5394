"""The caller's process: the decorator façade, call intake, the hand-off to the worker, late labels and the
handle on the shared monitoring worker. Nothing here runs the analysis."""
