"""Real small models offline: install + convert (``install``), the real-model presets (``presets``) and the
first paper claim measured on them (``claim``). See docs/REAL_MODELS.md."""

from ml.offline.install import MODELS, InstallError, default_models_dir, install_offline, read_manifest

__all__ = ["MODELS", "InstallError", "default_models_dir", "install_offline", "read_manifest"]
