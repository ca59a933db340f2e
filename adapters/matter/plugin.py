"""The Matter adapter's plugin registration (entry point `otagw.adapters: matter`): config section `matter`,
the `otagw matter ...` commands, and the check that the chip SDK exists on this platform (it ships Linux
x86_64/aarch64 wheels only; elsewhere the gateway says so in one line and serves without Matter)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.plugins import LazyAdapterPlugin, RunningAdapter

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config import Config


def _enabled(config: Any) -> bool:
    return bool(config.matter.enabled)


class MatterPlugin(LazyAdapterPlugin):
    """Builds `MatterAdapter` with its section plus the one policy value the provider answers with (Busy's
    retry time), so the adapter never reaches into the core's config."""

    def create(self, core: Any, config: Config, *, clock: Clock, data_dir: Path) -> RunningAdapter:
        cls = self.adapter_class()
        adapter: RunningAdapter = cls(
            config.matter, core, clock, data_dir, busy_retry_s=config.policy.busy_retry_s
        )
        return adapter


plugin = MatterPlugin(
    name="matter",
    target="adapters.matter.adapter:MatterAdapter",
    config_section="matter",
    is_enabled=_enabled,
    cli_target="adapters.matter.cli:matter",
    required_modules=("chip",),
    simulator_target="adapters.matter.sim",
    install_hint="pip install 'otagw[matter]'; the chip SDK has wheels for Linux x86_64/aarch64 only",
)
