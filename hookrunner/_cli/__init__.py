"""The ``hookrunner`` command: argument parsing and one function per subcommand, the demo, the plugin scaffold.

Internal: the command line is the interface.
"""
