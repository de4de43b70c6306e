"""Training jobs: SQLite records, a bounded queue, worker processes, recovery, SSE.

`manager.JobManager` is the entry point for the server; `worker` is the child process.
"""
