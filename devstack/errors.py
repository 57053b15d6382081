"""The one error type of the local stack, in a module of its own so that every devstack
module (servers, Serve operations) can raise it without importing the others."""


class StackError(RuntimeError):
    """A server or a Serve operation failed; the message says why (with a log tail)."""
