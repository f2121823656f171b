"""Errors a user can act on. The command line prints them as one line, without a traceback."""


class RcnnError(Exception):
    """A problem with the user's input, files or options, stated so that they can fix it."""


class BadSampleError(RcnnError):
    """One image or annotation cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self):  # rebuilt from both arguments when it comes back from a process
        return type(self), (self.path, self.problem)
