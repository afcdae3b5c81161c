"""Errors a user can fix by changing the config or the command line."""


class ConfigError(ValueError):
  """A bad config value, found before any compute is spent.

  The message always names the offending field (e.g. ``config.encoding.name``)
  and says how to fix it, so the command line can print it as one line.
  """

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"{field}: {message}")
