"""The project's one exception for bad input: any module may raise it, without the configuration."""


class ConfigError(Exception):
    """Bad input or configuration: reported as one sentence, exit code 2."""
