"""Modbus devices from declarative profiles: profile loading, request planning, the pymodbus adapter, the driver."""

from drivers.modbus.planner import ReadRequest, Span, plan_reads
from drivers.modbus.profile import Profile, ProfileError, Register, load_profile, parse_profile, shipped_profiles

__all__ = [
    "Profile",
    "ProfileError",
    "ReadRequest",
    "Register",
    "Span",
    "load_profile",
    "parse_profile",
    "plan_reads",
    "shipped_profiles",
]
