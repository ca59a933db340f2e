"""Hardware-free Matter peers for the demo and the interop tests: a network-namespace pair (`netns`) and the
matter.js OTA requestor device as a subprocess (`matterjs_device`). Nothing here runs in the root namespace."""

from adapters.matter.sim.matterjs_device import (
    JS_DIR,
    MatterJsDevice,
    MatterJsDeviceError,
    device_script,
    export_paas,
    node_unavailable_reason,
)
from adapters.matter.sim.netns import (
    NetnsPair,
    NetnsSide,
    create_pair,
    delete_pair,
    netns_pair,
    netns_unavailable_reason,
)

__all__ = [
    "JS_DIR",
    "MatterJsDevice",
    "MatterJsDeviceError",
    "NetnsPair",
    "NetnsSide",
    "create_pair",
    "delete_pair",
    "device_script",
    "export_paas",
    "netns_pair",
    "netns_unavailable_reason",
    "node_unavailable_reason",
]
