"""Sub-commands of ``veracity`` beyond bound/verify/demo, one module per topic.

Each module here defines ``register(app)`` that adds its commands to the typer app; ``veracity.cli``
calls it for every module of this package. Modules import their heavy dependencies inside the command
functions so that ``veracity --help`` stays fast, and report bad input by raising ``veracity.cli.BadInput``
inside ``veracity.cli.guard``.
"""
