"""The one exception type for user errors: bad file, bad column, bad option, unknown model."""


class UserError(Exception):
    """A mistake in the user's input. The CLI prints it as one paragraph and exits with code 2."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(f"{what} {fix}" if fix else what)
