"""Root conftest: enables pytester for the framework's own tests (it must be declared at the rootdir)."""

pytest_plugins = ["pytester"]
