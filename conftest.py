"""Test plugins shared by every test module."""

pytest_plugins = ["tests.daemon_harness", "tests.inprocess"]
