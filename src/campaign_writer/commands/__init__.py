"""One module per CLI subcommand.

Each module defines ``HELP`` (one line for ``campaign-writer --help``), ``configure``
(adds its arguments to an argparse parser) and ``execute`` (takes the parsed
arguments and returns an exit code, or a coroutine that :mod:`campaign_writer.cli`
runs on uvloop). Modules import heavy dependencies inside ``execute`` so that
``--help`` stays fast.
"""
