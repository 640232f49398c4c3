"""vLLM engines as Ray jobs: the job request for each replica, the decisions that supervise it (pure), and the
health probe (the one module here that does I/O). Import the submodules; this package re-exports nothing so
that importing a pure module never pulls in the probe's HTTP client."""
