"""Hardware-free Zigbee harness: a fake-radio zigpy application and simulated OTA client devices.

Used by tests, `bench/bench_zigbee.py` and (later) `otagw demo`.
"""

from adapters.zigbee.sim.app import SimControllerApplication, SimNetwork, fast_zigpy_timing
from adapters.zigbee.sim.device import Behaviour, SimOtaDevice

__all__ = ["Behaviour", "SimControllerApplication", "SimNetwork", "SimOtaDevice", "fast_zigpy_timing"]
