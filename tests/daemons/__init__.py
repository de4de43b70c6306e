"""Real Redis, PostgreSQL and nginx for the scale-out tests, each started on a free loopback
port in a temporary folder and stopped afterwards. A test that needs one and finds its binary
missing is skipped with the `make system-deps` hint (the Makefile installs them)."""
