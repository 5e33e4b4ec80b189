"""The two ways a request ends without a result, as the command line reports them.

`GrowError` (exit 2): the request cannot be carried out — bad input, unknown layer, unsupported
pattern. Its message says what is wrong and what would work instead.
`MismatchError` (exit 1): a transform ran, but the student does not compute what the teacher does.
"""


class GrowError(Exception):
    """A request onnxgrow cannot carry out. The message is shown to the user as is."""

    exit_code = 2


class MismatchError(GrowError):
    """The student's outputs differ from the teacher's beyond tolerance; carries the report."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
