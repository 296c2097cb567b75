"""Device profiles as data: `load_profile(name_or_path)`, `list_profiles()`, `format_of(...)`."""

from autocompress.hardware.profile import FORMATS, DeviceProfile, Kernel, format_of, list_profiles, load_profile

__all__ = ["FORMATS", "DeviceProfile", "Kernel", "format_of", "list_profiles", "load_profile"]
