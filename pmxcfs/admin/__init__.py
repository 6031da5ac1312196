"""pmxcfs-admin: offline tools that work directly on a config.db file.

Every subcommand lives in its own module; cli.py only parses arguments and dispatches.
"""
