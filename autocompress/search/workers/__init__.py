"""Where and how a trial runs: the backends (local, child process, Ray actors) and their in-flight
bookkeeping, the worker's `TrialRunner` and its `ModelWorkspace`, the child-process entry point and the test
fault hook. The driver submits plans to a backend and collects `TrialOutcome`s; nothing here decides which
plans to try."""
