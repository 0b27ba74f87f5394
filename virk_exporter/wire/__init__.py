"""What crosses the caller/worker boundary: the socket transport, its messages and the per-host rendezvous."""
